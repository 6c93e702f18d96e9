// Package executor runs one RUN process in a root filesystem, the way
// BuildKit's runc executor does, with two implementations of one interface:
//
//   - "chroot": built in, no external dependency. kiln re-executes itself
//     (/proc/self/exe) into new mount, pid, uts and ipc namespaces (and a new
//     network namespace for Network "none"); the child mounts everything,
//     pivot_roots into the root filesystem, drops privileges and execs the
//     process. Programs that use it must call Init first thing in main (and
//     tests in TestMain).
//   - "runc": writes an OCI bundle (runtime-spec config.json) and runs
//     `runc run` with a private state root (Config.RuncRoot: kiln gives
//     each build its own, and RemoveContainers clears a dead build's).
//
// Work directories (the root's mount point, hosts file, runc bundle) go in
// Config.Dir; kiln puts it on the build's tmpfs, because config.json holds
// the process environment, env= secrets included. The chroot child runs
// with PR_SET_PDEATHSIG=SIGKILL in its own pid namespace, so it and every
// process it started die with kiln; a runc container outlives a killed
// kiln until the next kiln command's sweep (internal/state) deletes it.
//
// What every Executor promises (the conformance suite in executor_test.go
// checks each line for both):
//
//   - Spec.Root is mounted in order at the container's root; Spec.Mounts are
//     applied after it, destinations resolved inside the root, so a symlink in
//     the image can never make the executor create or mount anything outside
//     it.
//   - The process sees a fresh /proc (new pid namespace: it is pid 1), a
//     minimal /dev on tmpfs, a read-only /sys, the host's /etc/resolv.conf
//     and a generated /etc/hosts (as BuildKit: localhost and the hostname),
//     both read-only, hostname "buildkitsandbox" unless Spec.Hostname says
//     otherwise, Docker's default capability set in its bounding set, no
//     no_new_privs, umask 0022, stdin /dev/null, and Spec.Env with Docker's
//     default PATH (and HOME from /etc/passwd) added when missing.
//   - Spec.User is resolved against the container's /etc/passwd and
//     /etc/group after the root is mounted, as BuildKit does.
//   - Spec.Cwd is created (0755, owned by the process user) when missing and
//     stays: like BuildKit, a WORKDIR made by RUN is part of the layer.
//   - Mount stubs: every file or directory the executor had to create in the
//     root filesystem only to serve as a mount point is removed after the
//     run when still empty, parents included, and the parents' times are
//     restored, so the snapshot diff never shows them. Stubs are recorded
//     before the process starts and removed by the parent kiln process through
//     its own mount of the root, so a cancelled run (process SIGKILLed) also
//     leaves none; only a kiln process that is itself killed can leave them
//     (and its work directory) behind, for internal/state's sweep.
//   - A non-zero exit is *ExitError; cancelling ctx kills the process (SIGTERM,
//     then SIGKILL after a short grace), cleans up and returns an error
//     wrapping ctx.Err(). Cleanup never runs on the cancelled context, and
//     leaves no mount behind.
//
// The package never imports internal/snapshot: the solver passes the root as
// []mount.Mount data.
package executor
