// Command tickcast-minio-admin applies tickcast's per-workload MinIO users and policies.
//
// It reads one JSON request on standard input (never arguments or the environment, so no
// secret shows in `ps` or /proc/<pid>/environ):
//
//	{"endpoint": "127.0.0.1:9000", "root_user": "...", "root_password": "...",
//	 "prefix": "tickcast-",
//	 "users": [{"name": "tickcast-consumer", "secret": "...", "policy": {...}}]}
//
// For each user it creates or overwrites the canned policy of the same name, creates the
// user or updates its secret, and maps the user to exactly that policy. Users and policies
// whose names start with prefix but are not in the request are removed, so a workload taken
// out of tickcast's grants loses its access. Re-running with the same request changes
// nothing. It prints one JSON line: {"applied": [...], "removed": [...]} and never prints a
// secret. Errors go to standard error with exit status 1.
//
// The admin API encrypts request bodies with the root secret (madmin's EncryptData); this
// program uses madmin-go itself, at the version MinIO's own go.mod pins.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/minio/madmin-go/v3"
)

type user struct {
	Name   string          `json:"name"`
	Secret string          `json:"secret"`
	Policy json.RawMessage `json:"policy"`
}

type request struct {
	Endpoint     string `json:"endpoint"`
	RootUser     string `json:"root_user"`
	RootPassword string `json:"root_password"`
	Prefix       string `json:"prefix"`
	Users        []user `json:"users"`
}

type result struct {
	Applied []string `json:"applied"`
	Removed []string `json:"removed"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "tickcast-minio-admin: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	var req request
	decoder := json.NewDecoder(os.Stdin)
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&req); err != nil {
		fail("reading the request from standard input: %v", err)
	}
	if req.Endpoint == "" || req.RootUser == "" || req.RootPassword == "" || req.Prefix == "" {
		fail("the request needs endpoint, root_user, root_password and prefix")
	}
	admin, err := madmin.New(req.Endpoint, req.RootUser, req.RootPassword, false)
	if err != nil {
		fail("connecting to %s: %v", req.Endpoint, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	out := result{Applied: []string{}, Removed: []string{}}
	wanted := map[string]bool{}
	for _, u := range req.Users {
		if !strings.HasPrefix(u.Name, req.Prefix) {
			fail("user %q does not start with the prefix %q", u.Name, req.Prefix)
		}
		wanted[u.Name] = true
		if err := apply(ctx, admin, u); err != nil {
			fail("user %s: %v", u.Name, err)
		}
		out.Applied = append(out.Applied, u.Name)
	}
	removed, err := prune(ctx, admin, req.Prefix, wanted)
	if err != nil {
		fail("removing stale users and policies: %v", err)
	}
	out.Removed = removed
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("writing the result: %v", err)
	}
}

// apply makes the policy, the user and the mapping between them what u says.
func apply(ctx context.Context, admin *madmin.AdminClient, u user) error {
	if len(u.Secret) < 8 {
		return fmt.Errorf("the secret must have at least 8 characters")
	}
	if err := admin.AddCannedPolicy(ctx, u.Name, u.Policy); err != nil {
		return fmt.Errorf("writing policy: %w", err)
	}
	// Creates the user, or sets the secret and enables it when it exists.
	if err := admin.AddUser(ctx, u.Name, u.Secret); err != nil {
		return fmt.Errorf("writing user: %w", err)
	}
	info, err := admin.GetUserInfo(ctx, u.Name)
	if err != nil {
		return fmt.Errorf("reading user: %w", err)
	}
	if info.PolicyName == u.Name {
		return nil
	}
	if info.PolicyName != "" {
		current := strings.Split(info.PolicyName, ",")
		if _, err := admin.DetachPolicy(ctx, madmin.PolicyAssociationReq{Policies: current, User: u.Name}); err != nil {
			return fmt.Errorf("detaching %s: %w", info.PolicyName, err)
		}
	}
	if _, err := admin.AttachPolicy(ctx, madmin.PolicyAssociationReq{Policies: []string{u.Name}, User: u.Name}); err != nil {
		return fmt.Errorf("attaching policy: %w", err)
	}
	return nil
}

// prune removes users and policies named prefix* that are not wanted.
func prune(ctx context.Context, admin *madmin.AdminClient, prefix string, wanted map[string]bool) ([]string, error) {
	removed := []string{}
	users, err := admin.ListUsers(ctx)
	if err != nil {
		return nil, err
	}
	for name := range users {
		if strings.HasPrefix(name, prefix) && !wanted[name] {
			if err := admin.RemoveUser(ctx, name); err != nil {
				return nil, err
			}
			removed = append(removed, "user "+name)
		}
	}
	policies, err := admin.ListCannedPolicies(ctx)
	if err != nil {
		return nil, err
	}
	for name := range policies {
		if strings.HasPrefix(name, prefix) && !wanted[name] {
			if err := admin.RemoveCannedPolicy(ctx, name); err != nil {
				return nil, err
			}
			removed = append(removed, "policy "+name)
		}
	}
	sort.Strings(removed)
	return removed, nil
}
