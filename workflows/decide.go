package workflows

import (
	"fmt"
	"slices"
	"time"

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

// RestartDecision is the outcome of DecideRestart.
type RestartDecision struct {
	Restart bool
	// Clear: nothing to restart, but pending marks the runtime has already
	// outlived are to be cleared.
	Clear  bool
	Reason string
	// Code is a short, fixed label for metrics: delivered, owed,
	// unverified, no_mark (restart) or nothing_delivered,
	// runtime_restarted (no restart); Prometheus-safe as they are.
	Code string
}

// DecideRestart decides the box's restart from durable state, not only from
// this run: delivered is what this run delivered since its last restart,
// present what it found already on the box.
//
//   - Nothing pending and nothing delivered: no restart.
//   - A delivery whose swap was not verified, or a runtime still running
//     under an identity read after some pending delivery: restart.
//   - Every pending delivery verified and the runtime started since all of
//     them (its identity is none of theirs): no restart, clear the marks;
//     a box that just booted has already loaded what is on disk.
//
// Anything uncertain restarts: a missed restart leaves old code running,
// a spare one costs a restart.
func DecideRestart(delivered, present int, f activities.RestartFacts) RestartDecision {
	pending := f.PendingSince != nil || len(f.MarkIdentities) > 0
	cause := func() string {
		if delivered > 0 {
			return fmt.Sprintf("%d plugin(s) delivered", delivered)
		}
		since := "an earlier run"
		if f.PendingSince != nil {
			since = "an earlier run (pending since " + f.PendingSince.UTC().Format(time.RFC3339) + ")"
		}
		return "restart still owed from " + since
	}
	code := "owed"
	if delivered > 0 {
		code = "delivered"
	}
	switch {
	case !pending && delivered == 0:
		return RestartDecision{Code: "nothing_delivered", Reason: fmt.Sprintf("%d plugin(s) already on the box, nothing delivered: restart skipped", present)}
	case !pending:
		return RestartDecision{Restart: true, Code: "no_mark", Reason: cause() + " (no restart mark found: restarting to be safe)"}
	case len(f.MarkIdentities) == 0:
		return RestartDecision{Restart: true, Code: code, Reason: cause()}
	case slices.Contains(f.MarkIdentities, ""):
		return RestartDecision{Restart: true, Code: "unverified", Reason: cause() + "; a delivery was not verified after its swap"}
	case slices.Contains(f.MarkIdentities, f.CurrentIdentity):
		return RestartDecision{Restart: true, Code: code, Reason: cause()}
	}
	return RestartDecision{Clear: true, Code: "runtime_restarted", Reason: "runtime already restarted after the last delivery: restart skipped"}
}
