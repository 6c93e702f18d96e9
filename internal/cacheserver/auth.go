package cacheserver

import (
	"fmt"
	"net/http"

	"github.com/distribution/distribution/v3/registry/auth"
)

// accessControllerName is kiln's access controller in distribution's
// registry of them: its htpasswd controller, with read-only users.
const accessControllerName = "kiln-htpasswd"

func init() {
	if err := auth.Register(accessControllerName, auth.InitFunc(newAccessController)); err != nil {
		panic(fmt.Sprintf("register %s: %v", accessControllerName, err))
	}
}

// accessController authenticates with distribution's htpasswd controller,
// then lets read-only users pull and nothing else.
type accessController struct {
	htpasswd auth.AccessController
	readOnly map[string]bool
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
	return &accessController{htpasswd: inner, readOnly: ro}, nil
}

func (ac *accessController) Authorized(req *http.Request, access ...auth.Access) (*auth.Grant, error) {
	grant, err := ac.htpasswd.Authorized(req, access...)
	if err != nil || !ac.readOnly[grant.User.Name] {
		return grant, err
	}
	for _, a := range access {
		if a.Action == "pull" || (a.Type == "registry" && a.Name == "catalog") {
			continue
		}
		// A challenge, so the client is told 401 with what it asked for,
		// as a token server answers a request beyond the token's scope.
		return nil, denied{realm: "kiln", access: a}
	}
	return grant, nil
}

// denied is a read-only user's write.
type denied struct {
	realm  string
	access auth.Access
}

func (d denied) Error() string {
	return fmt.Sprintf("read-only user may not %s %s", d.access.Action, d.access.Name)
}

func (d denied) SetHeaders(_ *http.Request, w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q", d.realm))
}
