// Package lock is kiln's one file lock: flock(2) on a lock file, shared or
// exclusive, waited for under a context or tried once.
//
// flock has no blocking form that a context can interrupt, and a blocking
// flock in a goroutine outlives its cancelled caller (and may take the lock
// after the caller gave up). Acquire therefore polls LOCK_NB with a short,
// growing backoff: a cancelled wait returns at once and leaves nothing
// behind.
//
// A lock belongs to an open file description, so it is released when the
// holder unlocks, closes the file, or dies: a kill -9 never leaves a lock
// held. Lock files are opened close-on-exec, so processes kiln starts
// (runc, a RUN step) never inherit them. The lock file itself is never
// removed here; callers that remove a directory holding one do so while
// they hold it exclusively.
package lock
