module example.com/inventory

go 1.26

require (
	github.com/cespare/xxhash/v2 v2.2.0
	github.com/google/uuid v1.5.0
	github.com/spf13/pflag v1.0.5
	golang.org/x/sync v0.7.0
)
