package cacheserver

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/distribution/distribution/v3/registry/auth"
)

// accessControllerName is kiln's access controller in distribution's
// registry of them: its htpasswd controller, with read-only users and
// per-repository prefixes.
const accessControllerName = "kiln-htpasswd"

func init() {
	if err := auth.Register(accessControllerName, auth.InitFunc(newAccessController)); err != nil {
		panic(fmt.Sprintf("register %s: %v", accessControllerName, err))
	}
}

// RepoAccess lets a user reach the repositories under Prefix: pull, and
// with Write also push and delete.
type RepoAccess struct {
	Prefix string
	Write  bool
}

// A repository name's path components (distribution/reference's grammar).
var pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)

// ParseAccess reads USER=MODE:PREFIX[,MODE:PREFIX...], MODE being ro or rw,
// e.g. ci-team-a=rw:team-a/,ro:base/. A prefix covers the repository of
// that name and every one below it; where prefixes nest, the longest one
// decides, so rw:team-a/,ro:team-a/releases/ keeps releases read-only.
func ParseAccess(s string) (string, []RepoAccess, error) {
	user, list, ok := strings.Cut(s, "=")
	if !ok || user == "" || list == "" {
		return "", nil, fmt.Errorf("access %q: want USER=MODE:PREFIX[,MODE:PREFIX...], e.g. ci=rw:team-a/,ro:base/", s)
	}
	var grants []RepoAccess
	for item := range strings.SplitSeq(list, ",") {
		mode, prefix, ok := strings.Cut(item, ":")
		if !ok || (mode != "ro" && mode != "rw") {
			return "", nil, fmt.Errorf("access %q: %q: want ro:PREFIX or rw:PREFIX", s, item)
		}
		prefix = strings.TrimSuffix(prefix, "/")
		if prefix == "" {
			return "", nil, fmt.Errorf("access %q: %q names no repository prefix (a user with every repository needs no --access)", s, item)
		}
		for c := range strings.SplitSeq(prefix, "/") {
			if !pathComponent.MatchString(c) {
				return "", nil, fmt.Errorf("access %q: %q is not a repository name prefix (lowercase letters, digits and separators, components split by /)", s, prefix)
			}
		}
		if slices.ContainsFunc(grants, func(g RepoAccess) bool { return g.Prefix == prefix }) {
			return "", nil, fmt.Errorf("access %q: prefix %q given twice", s, prefix)
		}
		grants = append(grants, RepoAccess{Prefix: prefix, Write: mode == "rw"})
	}
	return user, grants, nil
}

// checkUsers fails when a user given read-only or per-repository access
// is not in the htpasswd file, since a typo there would otherwise leave the
// intended user with full access.
func checkUsers(cfg Config) error {
	if cfg.Htpasswd == "" {
		if len(cfg.ReadOnly) > 0 {
			return errors.New("cache server: --read-only-user needs --htpasswd")
		}
		if len(cfg.Access) > 0 {
			return errors.New("cache server: --access needs --htpasswd")
		}
		return nil
	}
	f, err := os.Open(cfg.Htpasswd)
	if err != nil {
		return fmt.Errorf("cache server: htpasswd file: %w", err)
	}
	defer f.Close()
	known := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if user, _, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") {
			known[user] = true
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("cache server: htpasswd file: %w", err)
	}
	for _, u := range cfg.ReadOnly {
		if !known[u] {
			return fmt.Errorf("cache server: --read-only-user %q is not a user in %s", u, cfg.Htpasswd)
		}
		if _, ok := cfg.Access[u]; ok {
			return fmt.Errorf("cache server: user %q has both --read-only-user and --access; give it ro: prefixes in --access instead", u)
		}
	}
	for u := range cfg.Access {
		if !known[u] {
			return fmt.Errorf("cache server: --access user %q is not a user in %s", u, cfg.Htpasswd)
		}
	}
	return nil
}

// accessController authenticates with distribution's htpasswd controller,
// then lets read-only users pull and nothing else, and users with
// per-repository access reach only the repositories they were given.
type accessController struct {
	htpasswd auth.AccessController
	readOnly map[string]bool
	access   map[string][]RepoAccess
	// repoPrefix is what a mirror's requests lost on their way to it
	// ("docker.io/"), so prefixes are matched against the names clients
	// use.
	repoPrefix string
}

func newAccessController(options map[string]any) (auth.AccessController, error) {
	inner, err := auth.GetAccessController("htpasswd", options)
	if err != nil {
		return nil, err
	}
	ro := map[string]bool{}
	users, _ := options["readonly"].([]string)
	for _, u := range users {
		ro[u] = true
	}
	access, _ := options["access"].(map[string][]RepoAccess)
	prefix, _ := options["repoprefix"].(string)
	return &accessController{htpasswd: inner, readOnly: ro, access: access, repoPrefix: prefix}, nil
}

func (ac *accessController) Authorized(req *http.Request, access ...auth.Access) (*auth.Grant, error) {
	grant, err := ac.htpasswd.Authorized(req, access...)
	if err != nil {
		return grant, err
	}
	user := grant.User.Name
	grants, limited := ac.access[user]
	if !ac.readOnly[user] && !limited {
		return grant, nil
	}
	for _, a := range access {
		if !ac.allowed(user, grants, limited, a) {
			// A challenge, so the client is told 401 with what it asked
			// for, as a token server answers a request beyond the token's
			// scope.
			return nil, denied{realm: "kiln", access: a}
		}
	}
	return grant, nil
}

func (ac *accessController) allowed(user string, grants []RepoAccess, limited bool, a auth.Access) bool {
	if a.Type == "registry" && a.Name == "catalog" {
		// distribution lists every repository to whoever may read the
		// catalog and cannot filter it by a user's prefixes: a limited
		// user's catalog is filteredCatalog's, never distribution's.
		return !limited
	}
	if !limited {
		return a.Action == "pull" // read-only
	}
	if a.Type != "repository" {
		return false
	}
	g, ok := longestPrefix(grants, ac.repoPrefix+a.Name)
	return ok && (a.Action == "pull" || g.Write)
}

// longestPrefix is the grant whose prefix covers repo most narrowly.
func longestPrefix(grants []RepoAccess, repo string) (RepoAccess, bool) {
	var best RepoAccess
	found := false
	for _, g := range grants {
		if (repo == g.Prefix || strings.HasPrefix(repo, g.Prefix+"/")) && (!found || len(g.Prefix) > len(best.Prefix)) {
			best, found = g, true
		}
	}
	return best, found
}

// denied is a request beyond the user's access.
type denied struct {
	realm  string
	access auth.Access
}

func (d denied) Error() string {
	return fmt.Sprintf("user may not %s %s", d.access.Action, d.access.Name)
}

func (d denied) SetHeaders(_ *http.Request, w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q", d.realm))
}
