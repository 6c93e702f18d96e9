package fileop

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// ErrUnknownOwner is returned by ResolveOwner for a user or group name that
// is not in the rootfs's /etc/passwd or /etc/group.
var ErrUnknownOwner = errors.New("unknown user or group")

// ResolveOwner resolves a --chown or USER spec ("1000", "1000:50", "app",
// "app:staff", "app:50", "1000:staff") against rootfs's /etc/passwd and
// /etc/group. Without a group, a user given by name gets its primary GID
// from /etc/passwd and a user given by number gets the same number as GID.
// Numeric specs read no files.
func ResolveOwner(rootfs, spec string) (Owner, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" || (hasGroup && groupPart == "") {
		return Owner{}, fmt.Errorf("invalid user spec %q", spec)
	}
	var o Owner
	primary := -1
	if n, err := strconv.Atoi(userPart); err == nil {
		if n < 0 {
			return Owner{}, fmt.Errorf("invalid uid %q", userPart)
		}
		o.UID, primary = n, n
	} else {
		fields, err := lookup(rootfs, "/etc/passwd", userPart)
		if err != nil {
			return Owner{}, fmt.Errorf("resolve user %q: %w", userPart, err)
		}
		if len(fields) < 4 {
			return Owner{}, fmt.Errorf("resolve user %q: malformed /etc/passwd entry", userPart)
		}
		if o.UID, err = strconv.Atoi(fields[2]); err != nil {
			return Owner{}, fmt.Errorf("resolve user %q: bad uid %q", userPart, fields[2])
		}
		if primary, err = strconv.Atoi(fields[3]); err != nil {
			return Owner{}, fmt.Errorf("resolve user %q: bad gid %q", userPart, fields[3])
		}
	}
	if !hasGroup {
		o.GID = primary
		return o, nil
	}
	if n, err := strconv.Atoi(groupPart); err == nil {
		if n < 0 {
			return Owner{}, fmt.Errorf("invalid gid %q", groupPart)
		}
		o.GID = n
		return o, nil
	}
	fields, err := lookup(rootfs, "/etc/group", groupPart)
	if err != nil {
		return Owner{}, fmt.Errorf("resolve group %q: %w", groupPart, err)
	}
	if len(fields) < 3 {
		return Owner{}, fmt.Errorf("resolve group %q: malformed /etc/group entry", groupPart)
	}
	if o.GID, err = strconv.Atoi(fields[2]); err != nil {
		return Owner{}, fmt.Errorf("resolve group %q: bad gid %q", groupPart, fields[2])
	}
	return o, nil
}

// lookup returns the colon-separated fields of the first line of the
// rootfs file (resolved inside rootfs) whose first field is name.
func lookup(rootfs, file, name string) ([]string, error) {
	p, err := securejoin.SecureJoin(rootfs, file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: no %s in the image", ErrUnknownOwner, file)
		}
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Split(line, ":")
		if fields[0] == name {
			return fields, nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return nil, fmt.Errorf("%w: %q not found in %s", ErrUnknownOwner, name, file)
}
