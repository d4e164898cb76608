package reconcile

import (
	"fmt"
	"path"
	"regexp"
	"strings"
)

// Box is one workspace's EC2 instance as every layer sees it: where it is,
// who to log in as, where its plugins live and how to trust it. The
// workflows carry it to the activities (as "Workspace"), box access dials
// it, the store keeps it. Nothing in it is secret: the host key is public.
type Box struct {
	ID               string // the workspace's id
	InstanceID       string
	Region           string // empty: the clients' region
	AvailabilityZone string // empty: as DescribeInstances reports it
	OSUser           string
	PluginRoot       string
	// HostKey is the pinned host key in authorized_keys format; empty means
	// trust on first use.
	HostKey string
}

var (
	instanceIDRE = regexp.MustCompile(`^i-[a-f0-9]{8,17}$`)
	osUserRE     = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	pluginRootRE = regexp.MustCompile(`^(/[A-Za-z0-9._-]+)+$`)
)

// Validate checks every field that reaches a remote command or an AWS call.
func (b Box) Validate() error {
	switch {
	case !instanceIDRE.MatchString(b.InstanceID):
		return fmt.Errorf("instance id %q is not an EC2 instance id", b.InstanceID)
	case !osUserRE.MatchString(b.OSUser):
		return fmt.Errorf("os user %q is not a valid user name", b.OSUser)
	case !pluginRootRE.MatchString(b.PluginRoot) || path.Clean(b.PluginRoot) != b.PluginRoot || strings.Contains(b.PluginRoot, "/../"):
		return fmt.Errorf("plugin root %q must be a clean absolute path", b.PluginRoot)
	}
	return nil
}
