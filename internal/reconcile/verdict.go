package reconcile

import (
	"fmt"
	"slices"
	"strings"
)

// Plugin is a declared plugin.
type Plugin struct {
	Name    string
	Version string
	// Digest is optional: when both it and the box's manifest carry one,
	// they must match for the plugin to count as present; when declared,
	// the catalog's bundle must be this one.
	Digest string `json:",omitempty"`
}

func (p Plugin) String() string { return p.Name + "@" + p.Version }

// Miss says why a probe found no usable manifest.
type Miss string

// Misses.
const (
	MissNone        Miss = ""             // a manifest naming the plugin was read
	MissNoManifest  Miss = "no-manifest"  // no plugin.yaml
	MissNotAFile    Miss = "not-a-file"   // plugin.yaml is a symlink, a directory, ...
	MissUnreadable  Miss = "unreadable"   // plugin.yaml cannot be read
	MissInvalid     Miss = "invalid"      // empty, oversized, binary or unparseable
	MissOtherPlugin Miss = "other-plugin" // it names another plugin
)

// Probe is what the box's manifest says. Present is false whenever
// anything is uncertain; Missing says why, Reason in words.
type Probe struct {
	Present bool
	Version string
	Digest  string
	Reason  string
	Missing Miss `json:",omitempty"`
}

// Verdict is DecidePlugin's answer.
type Verdict string

// Verdicts.
const (
	VerdictPresent       Verdict = "present"        // confirmed on the box at the declared version: record only
	VerdictAbsent        Verdict = "absent"         // no manifest
	VerdictUnreadable    Verdict = "unreadable"     // a manifest that cannot be trusted (see Probe.Missing)
	VerdictStale         Verdict = "stale"          // another version
	VerdictDigestDiffers Verdict = "digest-differs" // the declared version, another bundle
)

// Deliver reports whether the verdict calls for a delivery.
func (v Verdict) Deliver() bool { return v != VerdictPresent }

// Missing reports whether the plugin is not on the box (absent or
// unreadable), as opposed to there at another version or bundle.
func (v Verdict) Missing() bool { return v == VerdictAbsent || v == VerdictUnreadable }

// DecidePlugin decides whether a declared plugin must be delivered. Only a
// confirmed match counts as present: a plugin the probe could not confirm,
// at another version, or with a digest other than the declared one (when
// both are known) is delivered.
func DecidePlugin(want Plugin, probe Probe) Verdict {
	switch {
	case !probe.Present && probe.Missing == MissNoManifest:
		return VerdictAbsent
	case !probe.Present:
		return VerdictUnreadable
	case probe.Version != want.Version:
		return VerdictStale
	case want.Digest != "" && probe.Digest != "" && want.Digest != probe.Digest:
		return VerdictDigestDiffers
	}
	return VerdictPresent
}

// Reason is the verdict in words, for the history and the operator.
func (v Verdict) Reason(want Plugin, probe Probe) string {
	switch v {
	case VerdictAbsent, VerdictUnreadable:
		return "absent: " + probe.Reason
	case VerdictStale:
		return fmt.Sprintf("stale: box has %s, declared %s", probe.Version, want.Version)
	case VerdictDigestDiffers:
		return fmt.Sprintf("digest differs: box has %s, declared %s", probe.Digest, want.Digest)
	}
	return "already on the box at " + want.Version
}

// Action is what a reconcile did (or, in a dry run, would do) with a plugin.
type Action string

// Actions.
const (
	ActionRecorded     Action = "recorded"      // on the box: tracking row written
	ActionDelivered    Action = "delivered"     // delivered, then tracking row written
	ActionFailed       Action = "failed"        // failed after its retries
	ActionWouldRecord  Action = "would-record"  // dry run
	ActionWouldDeliver Action = "would-deliver" // dry run
	ActionPending      Action = "pending"       // not finished yet (status query)
	ActionCancelled    Action = "cancelled"     // the reconcile was cancelled first
	ActionRemoved      Action = "removed"       // not declared: removed from the box, tracking row deleted
	ActionWouldRemove  Action = "would-remove"  // dry run
)

// Converged reports whether the plugin ended (or, in a dry run, would end)
// on the box as declared and tracked.
func (a Action) Converged() bool {
	return a == ActionRecorded || a == ActionDelivered || a == ActionWouldRecord || a == ActionWouldDeliver
}

// Outcomes of a reconcile, the values of its ReconcileOutcome search
// attribute.
const (
	OutcomeRunning      = "running"
	OutcomeRecordedOnly = "recorded-only"
	OutcomeDelivered    = "delivered" // delivered, no restart needed
	OutcomeRestarted    = "restarted"
	OutcomeFailed       = "failed"
	OutcomeDryRun       = "dry-run"
	OutcomeCancelled    = "cancelled"
)

// Declare folds a declaration into the stored set: with prune, the
// declaration is the whole set; without, its plugins are added to the
// stored ones (a later version of a plugin replaces the earlier). The
// result is sorted by name.
func Declare(stored, declared []Plugin, prune bool) []Plugin {
	byName := map[string]Plugin{}
	if !prune {
		for _, p := range stored {
			byName[p.Name] = p
		}
	}
	for _, p := range declared {
		byName[p.Name] = p
	}
	out := make([]Plugin, 0, len(byName))
	for _, p := range byName {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Plugin) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Desired is a workspace's stored desired state: the declared set and the
// plugins a Prune declaration dropped whose removal is not done yet.
type Desired struct {
	Plugins  []Plugin // sorted by name
	Removals []string // sorted
}

// NextDesired is the desired state a declaration makes of the stored one.
// A workspace with no stored declaration (stored nil: tracked before
// declarations were kept, or by a worker that keeps none) starts from its
// tracking rows. Without Prune the declaration adds (Declare) and removes
// nothing; with Prune it is the set, and every plugin it drops that was
// declared or tracked is owed a removal (declared and untracked too: a
// delivery cut after its swap leaves it on the box untracked). Converge
// keeps a stored declaration as it is. A plugin declared again is no
// longer owed a removal.
func NextDesired(stored *Desired, tracked []Plugin, in DeclareInput) Desired {
	var cur Desired
	if stored != nil {
		cur = *stored
	} else {
		cur.Plugins = Declare(nil, tracked, false)
	}
	next := Desired{Plugins: Declare(cur.Plugins, in.Plugins, in.Prune)}
	if in.Converge && stored != nil {
		next.Plugins = cur.Plugins
	}
	declared := func(name string) bool {
		return slices.ContainsFunc(next.Plugins, func(p Plugin) bool { return p.Name == name })
	}
	owed := map[string]bool{}
	for _, n := range cur.Removals {
		owed[n] = true
	}
	if in.Prune && !in.Converge {
		for _, p := range append(slices.Clone(cur.Plugins), tracked...) {
			owed[p.Name] = true
		}
	}
	for n := range owed {
		if !declared(n) {
			next.Removals = append(next.Removals, n)
		}
	}
	slices.Sort(next.Removals)
	return next
}
