package cacheserver

import (
	"fmt"
	"net"
	"net/netip"
)

// ErrExposed is returned for a non-loopback address with no auth and no
// explicit consent to serve without it: a cache anyone on the network can
// write to lets them put any bytes into every later build.
var ErrExposed = fmt.Errorf("refusing to serve a cache without auth beyond loopback: give --htpasswd, or --insecure-no-auth to accept that anyone who reaches the address can push")

// loopback reports whether addr ("host:port") only listens on loopback. An
// empty host listens on every interface; a host name counts only if it is
// "localhost", since what else a name resolves to can change after the
// check.
func loopback(addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return true, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false, nil
	}
	return ip.IsLoopback(), nil
}
