package cli

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/kiln-build/kiln/internal/solver"
)

// parseSSH reads --ssh as buildx does: "ID" (or "default") is the agent at
// SSH_AUTH_SOCK (authSock), "ID=SOCKET" another agent, and "ID=KEY[,KEY]"
// private key files, which kiln serves as an agent of its own, holding
// them in memory for the build.
func parseSSH(flags []string, authSock string) (map[string]solver.SSH, error) {
	out := map[string]solver.SSH{}
	for _, fl := range flags {
		id, paths, _ := strings.Cut(fl, "=")
		if id == "" {
			return nil, fmt.Errorf("--ssh %q: want default|ID[=SOCKET|KEY[,KEY...]]", fl)
		}
		if paths == "" {
			if authSock == "" {
				return nil, fmt.Errorf("--ssh %s: SSH_AUTH_SOCK is not set: start an ssh-agent or name a socket or key files", fl)
			}
			out[id] = solver.SSH{Socket: authSock}
			continue
		}
		files := strings.Split(paths, ",")
		if fi, err := os.Stat(files[0]); err == nil && fi.Mode()&os.ModeSocket != 0 && len(files) == 1 {
			out[id] = solver.SSH{Socket: files[0]}
			continue
		}
		keyring := agent.NewKeyring()
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("--ssh %s: %w", id, err)
			}
			key, err := ssh.ParseRawPrivateKey(b)
			if err != nil {
				return nil, fmt.Errorf("--ssh %s: %s: %w (a passphrase-protected key must be loaded in an ssh-agent)", id, f, err)
			}
			if err := keyring.Add(agent.AddedKey{PrivateKey: key, Comment: f}); err != nil {
				return nil, fmt.Errorf("--ssh %s: %s: %w", id, f, err)
			}
		}
		out[id] = solver.SSH{Agent: keyring}
	}
	return out, nil
}
