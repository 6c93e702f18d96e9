// Package state gives each kiln command that builds its own directory
// under kiln's root, locked for the command's whole life, and cleans up
// after commands that died.
//
// # Crash model
//
// kiln may die at any instant without running a line of cleanup: kill -9,
// the OOM killer, a CI runner's timeout, a power cut. Whatever it was doing
// is then left as it was. kiln's answer is that everything transient a
// build makes lives in, or is recorded in, one directory that says whether
// its owner is alive:
//
//	ROOT/run/<id>/lock        flock, held exclusively by the owner until it exits
//	ROOT/run/<id>/owner       the owner's pid (for people; never trusted)
//	ROOT/run/<id>/a/          active (writable) snapshots: overlay upper and work dirs, copy trees
//	ROOT/run/<id>/temp        the path of the build's temp dir, TMPDIR/kiln-build-<id>/:
//	  .../kiln-build-<id>/         root filesystem mount points, layer blobs being written, bind
//	                               sources: large, short-lived files kept out of kiln's bounded
//	                               directory, and every mount (so `du -s ROOT` never counts a view)
//	  .../kiln-build-<id>/mem/     a tmpfs: secrets, the executor's bundles (runc's config.json
//	                               holds env= secrets), runc's state root for this build's containers
//	ROOT/run/<id>/partial     "LOCK\tDIR" lines: directories elsewhere (type=local cache dests,
//	                          kiln's own cache) where this build may leave partial files
//	ROOT/run/<id>/owned       glob patterns naming this build's own files elsewhere, which carry
//	                          its id because they must sit where they are renamed
//	                          (ROOT/mounts/.new-<id>-*: a cache mount being seeded;
//	                          DEST_PARENT/.<dest>.tmp-<id>-*: an -o dest being written)
//
// The kernel drops an flock with its holder's last file descriptor, so a
// dead owner's lock is free and a live owner's is not: the lock is the
// only liveness test, never pids or ages. Every kiln command starts with
// Sweep: for each build directory whose lock it can take, it deletes the
// build's runc containers (runc delete --force: SIGKILL to the container's
// init, whose pid namespace takes every other process along), empties the
// recorded partial-file directories whose own lock it can take exclusively
// (no writer is active there), removes the files its recorded patterns
// match, unmounts everything mounted under the
// build's temp dir and its directory (deepest first, lazily when busy),
// and removes both. A build
// directory whose lock is held is never touched, and a tree is never
// removed through a mount that could not be unmounted.
//
// The chroot executor's process needs no sweep: it is started with
// PR_SET_PDEATHSIG=SIGKILL in a new pid namespace, so it dies with kiln and
// its descendants with it, and the mounts it made die with its mount
// namespace. runc's containers outlive kiln (runc run is reparented), which
// is why they live under a per-build runc root the sweep can list.
//
// Secrets are only ever written to the build's tmpfs. While kiln lives,
// they are in RAM; when it exits, Close unmounts the tmpfs; when it dies,
// the next kiln command's sweep does. They never reach a persistent disk.
//
// Begin never hands out a directory a concurrent sweep could take: it
// creates the directory, takes the lock with a single try (a sweeper that
// got there first wins, and Begin picks another name), and checks the lock
// still names the directory's lock file. A build's own Close runs the
// same teardown as a sweep, so the normal path and the crash path are one
// code path.
//
// What the sweep does not reach: state left by kiln versions before this
// package (TMPDIR/kiln-run-*, snapshots/a/*), which carries no lock.
package state
