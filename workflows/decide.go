package workflows

import (
	"fmt"

	"github.com/plugin-reconciler/plugin-reconciler/activities"
)

// DecidePlugin decides whether a declared plugin must be delivered. Only a
// confirmed match counts as present: a plugin the probe could not confirm,
// at another version, or with a digest other than the declared one (when
// both are known) is delivered.
func DecidePlugin(want Plugin, probe activities.Probe) (deliver bool, reason string) {
	switch {
	case !probe.Present:
		return true, "absent: " + probe.Reason
	case probe.Version != want.Version:
		return true, fmt.Sprintf("stale: box has %s, declared %s", probe.Version, want.Version)
	case want.Digest != "" && probe.Digest != "" && want.Digest != probe.Digest:
		return true, fmt.Sprintf("digest differs: box has %s, declared %s", probe.Digest, want.Digest)
	}
	return false, "already on the box at " + want.Version
}
