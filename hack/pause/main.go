// Command pause is the pod sandbox ("infra") container of the e2e tier's
// Kubernetes node.
//
// containerd's CRI plugin starts one sandbox container per pod to hold the
// pod's namespaces. Upstream uses registry.k8s.io/pause, but the machines the
// tests run on cannot reach any container registry, so localenv.images builds
// this program into localhost/citus-backup-operator/pause instead. It does
// what a sandbox needs: nothing, until it is told to stop. When the pod shares
// one PID namespace (shareProcessNamespace) it is PID 1 there, so it also
// reaps the orphaned children that get re-parented to it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0) // asked to stop: the pod is being torn down
		}
		reapZombies()
	}
}

// reapZombies collects every exited child. Several SIGCHLDs can arrive as one
// notification, so it loops until no exited child is left.
func reapZombies() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return // ECHILD (no children) or none has exited yet
		}
	}
}
