// The restart protocol: how every change swapped onto a box is followed by
// exactly one restart of its runtime after the swap, how no restart happens
// without a change, and how nothing owed is lost, whatever triggers,
// crashes, retries, deploys, resets and operator actions land between the
// steps. Its states, and who moves each:
//
//	(1) mark written ─────────── store: restart_marks row, restart_pending_since
//	     │                       by DeliverViaEIC, before the box is touched
//	     ▼
//	(2) swapped and sealed ───── box: journal line "<plugin> <identity>" just before
//	     │                       and just after the rename, under the box lock (shared),
//	     │                       by the install script; store: the mark sealed with the
//	     │                       identity, by DeliverViaEIC
//	     ▼
//	(3) restart issued ───────── store: ledger row (restart_id, requested_at), by
//	     │                       RestartBox before the command is sent; box: the row's
//	     │                       restart_id as the restart token, by the restart script
//	     │                       under the box lock (exclusive), only if the journal owes
//	     ▼
//	(4) restart verified ─────── box: a new runtime identity, journal emptied, by the
//	     │                       restart script (reboot mode: a new boot id, journal
//	     │                       pruned by RestartBox)
//	     ▼
//	(5) cleared ──────────────── store: ledger row completed, marks up to its request
//	                             cleared, pending cleared when none is left, by RestartBox
//
// The box's journal is the truth about what is owed: a line whose identity
// is the runtime's current one is a swap the running runtime has not loaded.
// Because the install script writes it under the same lock the restart
// script takes exclusively, a swap and a restart never interleave, and the
// identity a swap is sealed with is exactly the runtime it happened under.
// A restart that happened for any other reason (a crash, a reboot, an
// operator) changes the identity and so settles the lines before it.
//
// The store's marks are the durable hint that a box must be looked at (a
// crash between (1) and (2) leaves one) and what operators see as "restart
// pending"; the store's ledger makes the restart command exactly-once: one
// row per issued restart (a run has one per round), at most one in flight
// per workspace. A retry, a duplicate attempt running at the same time, a
// redelivered task after a deploy, a reset run or the next reconcile finds
// the row in flight and sends the same token again; the box applies a token
// once. So "issued, not yet visible" (the row is in flight) is told apart
// from "never issued" (no row), and the box itself refuses a second restart
// for one token, and any restart when its journal owes nothing.
//
// DecideRestart is the one decision, used before a restart (the workflow),
// inside it (RestartBox, through RunRestart) and after a cancel; RunRestart
// (restartrun.go) is RestartBox's algorithm, against the Ledger and BoxSide
// that the activities implement.

package reconcile

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Modes of restart.
const (
	ModeRuntime = "runtime" // the configured restart command, through the restart script
	ModeReboot  = "reboot"  // EC2 RebootInstances
)

// JournalEntry is one journal line: plugin was swapped while the runtime had
// Identity ("" when the line could not be read: it counts as owed).
type JournalEntry struct {
	Plugin   string
	Identity string
}

// ParseJournal reads the box's journal, one "<plugin> <identity>" per line.
// A line it cannot read is kept as an entry without identity: uncertain
// means owed.
func ParseJournal(data string) []JournalEntry {
	var out []JournalEntry
	for _, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		plugin, identity, ok := strings.Cut(line, " ")
		if !ok {
			out = append(out, JournalEntry{Plugin: plugin})
			continue
		}
		out = append(out, JournalEntry{Plugin: plugin, Identity: strings.TrimSpace(identity)})
	}
	return out
}

// IssuedRestart is a ledger row of a restart issued and not yet completed.
type IssuedRestart struct {
	RestartID      string
	Mode           string
	IdentityBefore string
	// Force: the restart is owed by marks written before the journal
	// existed, which the box cannot see.
	Force bool `json:",omitempty"`
	// Age is how long ago it was issued, by the store's clock.
	Age time.Duration
}

// RestartFacts is the durable state a restart is decided from. The first four
// fields are what the store alone told before the box kept a journal;
// histories recorded then carry only those, and are decided as they were.
type RestartFacts struct {
	PendingSince *time.Time
	// MarkIdentities are the identities the pending marks were sealed with
	// ("" for a swap not verified).
	MarkIdentities []string
	LatestMark     time.Time
	// CurrentIdentity is the runtime's identity now.
	CurrentIdentity string

	// JournalRead: the box's journal was read (always, since it exists).
	JournalRead bool `json:",omitempty"`
	// Journal is what the box's journal holds.
	Journal []JournalEntry `json:",omitempty"`
	// LegacyMarks are the identities of pending marks written before the
	// journal existed: the box has no line for them, so the store's seal
	// decides them.
	LegacyMarks []string `json:",omitempty"`
	// InFlight is a restart issued and not yet completed.
	InFlight *IssuedRestart `json:",omitempty"`
	// ReadAt is when the store part was read (its clock): marks up to it
	// may be cleared when nothing is owed.
	ReadAt time.Time `json:",omitempty"`
}

// Owed lists the plugins whose swap the running runtime has not loaded:
// journal lines sealed with the current identity or unreadable, and legacy
// marks not verified or sealed with the current identity.
func (f RestartFacts) Owed() []string {
	var out []string
	for _, e := range f.Journal {
		if e.Identity == "" || e.Identity == f.CurrentIdentity {
			if !slices.Contains(out, e.Plugin) {
				out = append(out, e.Plugin)
			}
		}
	}
	if f.LegacyOwed() {
		out = append(out, "(marks from before the journal)")
	}
	return out
}

// LegacyOwed: a mark written before the journal existed still owes a
// restart.
func (f RestartFacts) LegacyOwed() bool {
	return slices.ContainsFunc(f.LegacyMarks, func(id string) bool { return id == "" || id == f.CurrentIdentity })
}

func (f RestartFacts) pending() bool {
	return f.PendingSince != nil || len(f.MarkIdentities) > 0 || len(f.Journal) > 0
}

// RestartAction is what a decision asks for.
type RestartAction string

// Actions.
const (
	// NoRestart: nothing owed, nothing to clear.
	NoRestart RestartAction = "skip"
	// DoRestart: restart the box (or adopt the restart already in flight).
	DoRestart RestartAction = "restart"
	// ClearMarks: nothing owed, but marks or journal lines the runtime has
	// already outlived are to be cleared.
	ClearMarks RestartAction = "clear"
)

// RestartCode is a short, fixed label for metrics (Prometheus-safe as it is).
type RestartCode string

// Codes. The first six are the labels the metrics have always had.
const (
	CodeDelivered        RestartCode = "delivered"         // restart: this round swapped something
	CodeOwed             RestartCode = "owed"              // restart: owed from an earlier run
	CodeUnverified       RestartCode = "unverified"        // restart: a swap was not verified
	CodeNoMark           RestartCode = "no_mark"           // restart: delivered, no mark found (histories before the journal)
	CodeNothingDelivered RestartCode = "nothing_delivered" // skip: everything was already on the box
	CodeRuntimeRestarted RestartCode = "runtime_restarted" // clear: the runtime restarted since the last swap
	CodeInFlight         RestartCode = "in_flight"         // restart: one was issued and is not yet verified
	CodeUnchanged        RestartCode = "unchanged"         // skip or clear: deliveries found their bundle on the box, nothing swapped
	CodePlanned          RestartCode = "planned"           // dry run: deliveries would swap
)

// RestartDecision is the outcome of DecideRestart.
type RestartDecision struct {
	Action RestartAction
	Code   RestartCode
	Reason string
}

// Restart reports whether the decision is to restart.
func (d RestartDecision) Restart() bool { return d.Action == DoRestart }

// RestartRound is what one round of a reconcile did: deliveries and
// removals (or, in a dry run, those it would make) and plugins found
// already on the box.
type RestartRound struct {
	Delivered int
	Removed   int `json:",omitempty"`
	Present   int
	DryRun    bool
}

// changed counts the round's changes: deliveries and removals.
func (r RestartRound) changed() int { return r.Delivered + r.Removed }

// changes words the round's changes.
func (r RestartRound) changes(verb string) string {
	s := fmt.Sprintf("%d plugin(s) %s", r.Delivered, verb)
	if r.Removed > 0 {
		s = fmt.Sprintf("%d plugin(s) %s, %d removed", r.Delivered, verb, r.Removed)
		if r.DryRun {
			s = fmt.Sprintf("%d plugin(s) %s, %d to remove", r.Delivered, verb, r.Removed)
		}
	}
	return s
}

// DecideRestart decides a box's restart from durable state, not from what a run
// remembers. Anything uncertain restarts: a missed restart leaves old code
// running, a spare one costs a restart.
//
//   - A restart issued and not yet verified: restart (adopt it; the box
//     applies its token once).
//   - A journal line (or a legacy mark) the running runtime has not
//     loaded: restart.
//   - A dry run that would deliver: it would restart.
//   - Lines or marks the runtime has outlived: clear them, no restart.
//   - Otherwise: no restart (deliveries that found their bundle already on
//     the box swapped nothing).
func DecideRestart(r RestartRound, f RestartFacts) RestartDecision {
	if !f.JournalRead {
		return decideFromMarks(r, f)
	}
	cause := func(code RestartCode) string {
		if r.changed() > 0 {
			return r.changes("delivered")
		}
		since := "an earlier run"
		if f.PendingSince != nil {
			since += " (pending since " + f.PendingSince.UTC().Format(time.RFC3339) + ")"
		}
		return "restart still owed from " + since
	}
	owed := f.Owed()
	switch {
	case f.InFlight != nil:
		return RestartDecision{DoRestart, CodeInFlight, fmt.Sprintf("a restart issued %s ago is not yet verified", f.InFlight.Age.Round(time.Second))}
	case len(owed) > 0:
		code := CodeOwed
		if r.changed() > 0 {
			code = CodeDelivered
		}
		if slices.ContainsFunc(f.Journal, func(e JournalEntry) bool { return e.Identity == "" }) || slices.Contains(f.LegacyMarks, "") {
			return RestartDecision{DoRestart, CodeUnverified, cause(code) + "; a swap was not verified: " + strings.Join(owed, ", ")}
		}
		return RestartDecision{DoRestart, code, cause(code) + ": " + strings.Join(owed, ", ") + " not yet loaded by the runtime"}
	case r.DryRun && r.changed() > 0:
		return RestartDecision{DoRestart, CodePlanned, r.changes("to deliver")}
	case len(f.Journal) > 0:
		return RestartDecision{ClearMarks, CodeRuntimeRestarted, "runtime already restarted after the last swap: restart skipped"}
	case f.pending():
		return RestartDecision{ClearMarks, CodeUnchanged, "nothing was swapped since the last restart: restart skipped, pending marks cleared"}
	case r.Removed > 0:
		return RestartDecision{NoRestart, CodeUnchanged, fmt.Sprintf("%d delivered plugin(s) found their bundle already on the box, %d removal(s) found the plugin gone: nothing swapped, restart skipped", r.Delivered, r.Removed)}
	case r.Delivered > 0:
		return RestartDecision{NoRestart, CodeUnchanged, fmt.Sprintf("%d delivered plugin(s) found their bundle already on the box: nothing swapped, restart skipped", r.Delivered)}
	}
	return RestartDecision{NoRestart, CodeNothingDelivered, fmt.Sprintf("%d plugin(s) already on the box, nothing delivered: restart skipped", r.Present)}
}

// decideFromMarks is the decision as it was made before the box kept a
// journal, from the store's marks alone. Recorded histories carry facts of
// that shape, and replaying them must decide as they did.
func decideFromMarks(r RestartRound, f RestartFacts) RestartDecision {
	pending := f.PendingSince != nil || len(f.MarkIdentities) > 0
	cause := func() string {
		if r.Delivered > 0 {
			return fmt.Sprintf("%d plugin(s) delivered", r.Delivered)
		}
		since := "an earlier run"
		if f.PendingSince != nil {
			since = "an earlier run (pending since " + f.PendingSince.UTC().Format(time.RFC3339) + ")"
		}
		return "restart still owed from " + since
	}
	code := CodeOwed
	if r.Delivered > 0 {
		code = CodeDelivered
	}
	switch {
	case !pending && r.Delivered == 0:
		return RestartDecision{NoRestart, CodeNothingDelivered, fmt.Sprintf("%d plugin(s) already on the box, nothing delivered: restart skipped", r.Present)}
	case !pending:
		return RestartDecision{DoRestart, CodeNoMark, cause() + " (no restart mark found: restarting to be safe)"}
	case len(f.MarkIdentities) == 0:
		return RestartDecision{DoRestart, code, cause()}
	case slices.Contains(f.MarkIdentities, ""):
		return RestartDecision{DoRestart, CodeUnverified, cause() + "; a delivery was not verified after its swap"}
	case slices.Contains(f.MarkIdentities, f.CurrentIdentity):
		return RestartDecision{DoRestart, code, cause()}
	}
	return RestartDecision{ClearMarks, CodeRuntimeRestarted, "runtime already restarted after the last delivery: restart skipped"}
}
