package cacheserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// catalogMax is the most repositories one catalog page holds, as
// distribution's own default.
const catalogMax = 1000

// filteredCatalog answers GET /v2/_catalog for users limited by --access
// with only the repositories under their prefixes, since distribution's
// catalog lists the whole store to anyone it lets read it. Every other
// request, and every other user's, goes to next, whose access controller
// refuses a limited user's catalog should one get past this.
type filteredCatalog struct {
	next   http.Handler
	ac     *accessController
	repos  distribution.RepositoryEnumerator
	access map[string][]RepoAccess
}

func newFilteredCatalog(ctx context.Context, next http.Handler, driver storagedriver.StorageDriver, options map[string]any, access map[string][]RepoAccess) (http.Handler, error) {
	a, err := newAccessController(options)
	if err != nil {
		return nil, fmt.Errorf("cache server: catalog access: %w", err)
	}
	ns, err := storage.NewRegistry(ctx, driver)
	if err != nil {
		return nil, fmt.Errorf("cache server: open store for the catalog: %w", err)
	}
	repos, ok := ns.(distribution.RepositoryEnumerator)
	if !ok {
		return nil, errors.New("cache server: the store cannot list its repositories")
	}
	return &filteredCatalog{next: next, ac: a.(*accessController), repos: repos, access: access}, nil
}

func (c *filteredCatalog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v2/_catalog" || r.Method != http.MethodGet {
		c.next.ServeHTTP(w, r)
		return
	}
	// Only a user whose password checks out is served here; anyone else
	// gets distribution's own answer (a challenge).
	grant, err := c.ac.htpasswd.Authorized(r)
	if err != nil {
		c.next.ServeHTTP(w, r)
		return
	}
	grants, limited := c.access[grant.User.Name]
	if !limited {
		c.next.ServeHTTP(w, r)
		return
	}
	n := 100
	if v := r.URL.Query().Get("n"); v != "" {
		if n, err = strconv.Atoi(v); err != nil || n < 0 || n > catalogMax {
			http.Error(w, fmt.Sprintf(`{"errors":[{"code":"PAGINATION_NUMBER_INVALID","message":"n must be 0 to %d"}]}`, catalogMax), http.StatusBadRequest)
			return
		}
	}
	last := r.URL.Query().Get("last")
	// Enumerate walks the whole store; a cache server's repositories are
	// few enough to list them all for every page.
	var matches []string
	err = c.repos.Enumerate(r.Context(), func(repo string) error {
		if _, ok := longestPrefix(grants, repo); ok && repo > last {
			matches = append(matches, repo)
		}
		return nil
	})
	var nf storagedriver.PathNotFoundError
	if err != nil && !errors.As(err, &nf) {
		http.Error(w, `{"errors":[{"code":"UNKNOWN","message":"list repositories"}]}`, http.StatusInternalServerError)
		return
	}
	slices.Sort(matches)
	page := matches[:min(n, len(matches))]
	if len(page) > 0 && len(matches) > len(page) {
		q := url.Values{"n": {strconv.Itoa(n)}, "last": {page[len(page)-1]}}
		w.Header().Set("Link", fmt.Sprintf(`</v2/_catalog?%s>; rel="next"`, q.Encode()))
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(struct {
		Repositories []string `json:"repositories"`
	}{Repositories: append([]string{}, page...)}) // [] rather than null
}
