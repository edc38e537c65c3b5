module citus-backup-operator.local/pause

go 1.21
