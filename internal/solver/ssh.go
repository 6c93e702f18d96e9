package solver

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"golang.org/x/crypto/ssh/agent"

	"github.com/kiln-build/kiln/internal/executor"
)

// sshMount is type=ssh: a socket of kiln's own at the target, owned and
// moded as the mount asks (root, 0600), that forwards every connection
// to the agent --ssh names: the user's agent socket is never exposed to
// the step nor changed, and no key reaches a file. A missing id is
// skipped unless required, as in BuildKit.
func (b *builder) sshMount(m *instructions.Mount, target string) (executor.Mount, func(), bool, error) {
	nothing := func() {}
	id := m.CacheID
	if id == "" {
		id = "default"
	}
	src, ok := b.opts.SSH[id]
	if !ok {
		if m.Required {
			return executor.Mount{}, nothing, false, fmt.Errorf("no SSH key %q forwarded from the client (use --ssh %s)", id, id)
		}
		return executor.Mount{}, nothing, false, nil
	}
	dir, err := b.secretsDir()
	if err != nil {
		return executor.Mount{}, nothing, false, fmt.Errorf("ssh %q: %w", id, err)
	}
	sockDir, err := os.MkdirTemp(dir, "ssh-")
	if err != nil {
		return executor.Mount{}, nothing, false, fmt.Errorf("ssh %q: %w", id, err)
	}
	sock := filepath.Join(sockDir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		os.RemoveAll(sockDir)
		return executor.Mount{}, nothing, false, fmt.Errorf("ssh %q: %w", id, err)
	}
	var wg sync.WaitGroup
	done := func() {
		l.Close()
		wg.Wait()
		os.RemoveAll(sockDir)
	}
	if err := setOwnerMode(sock, m, 0o600); err != nil {
		done()
		return executor.Mount{}, nothing, false, fmt.Errorf("ssh %q: %w", id, err)
	}
	// The step's user must reach the socket through its directory.
	if err := os.Chmod(sockDir, 0o711); err != nil {
		done()
		return executor.Mount{}, nothing, false, fmt.Errorf("ssh %q: %w", id, err)
	}
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed when the step ends
			}
			wg.Go(func() { serveSSH(c, src) })
		}
	})
	return executor.Mount{Destination: target, Type: "bind", Source: sock, Options: []string{"rbind"}}, done, true, nil
}

// serveSSH answers one connection from a step: from kiln's own agent, or
// by relaying it to the agent's socket.
func serveSSH(c net.Conn, src SSH) {
	defer c.Close()
	if src.Agent != nil {
		_ = agent.ServeAgent(src.Agent, c)
		return
	}
	up, err := net.Dial("unix", src.Socket)
	if err != nil {
		return
	}
	defer up.Close()
	var wg sync.WaitGroup
	wg.Go(func() {
		_, _ = io.Copy(up, c)
		if u, ok := up.(*net.UnixConn); ok {
			_ = u.CloseWrite()
		}
	})
	_, err = io.Copy(c, up)
	if u, ok := c.(*net.UnixConn); ok && !errors.Is(err, net.ErrClosed) {
		_ = u.CloseWrite()
	}
	wg.Wait()
}
