package reconcile

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// LedgerFacts is the store's part of RestartFacts.
type LedgerFacts struct {
	PendingSince *time.Time
	// MarkIdentities are every pending mark's seal, LegacyMarks those of
	// marks written before the journal existed.
	MarkIdentities []string
	LegacyMarks    []string
	LatestMark     time.Time
	InFlight       *IssuedRestart
	ReadAt         time.Time
}

// Ledger is the store's part of the protocol, for one workspace.
type Ledger interface {
	// Facts reads the pending marks and the restart in flight.
	Facts(ctx context.Context) (LedgerFacts, error)
	// Issue records a restart before its command is sent, unless one is
	// in flight already: then it returns that one and created is false.
	Issue(ctx context.Context, r IssuedRestart, reason string) (in IssuedRestart, created bool, err error)
	// Complete closes a restart's row and clears the marks made up to its
	// request (and the pending time when none is left). Idempotent.
	Complete(ctx context.Context, restartID, identityAfter string, outcome LedgerOutcome) error
	// Fail closes a restart's row as failed: the next attempt issues anew.
	Fail(ctx context.Context, restartID, reason string) error
	// Clear clears marks made up to upTo: nothing is owed for them.
	Clear(ctx context.Context, upTo time.Time) error
}

// BoxState is what the box says: its runtime identity and its journal.
type BoxState struct {
	Identity string
	Journal  []JournalEntry
}

// RestartReply is the restart script's answer.
type RestartReply struct {
	Result   LedgerOutcome // LedgerRestarted, LedgerAlready (the token was applied before), LedgerNotNeeded (the journal owed nothing)
	Before   string        // the runtime's identity the token was applied under
	Identity string        // the runtime's identity after
	// Status and Message: the restart command failed (Result LedgerFailed).
	Status  int
	Message string
}

// BoxSide is the box's part of the protocol, for one box.
type BoxSide interface {
	State(ctx context.Context) (BoxState, error)
	// RestartRuntime runs the restart script with token: under the box's
	// exclusive lock it applies a token once, and only when the journal
	// (or force) owes a restart.
	RestartRuntime(ctx context.Context, token string, force bool) (RestartReply, error)
	// Reboot asks EC2 to reboot the instance.
	Reboot(ctx context.Context) error
	// Running fails, with the box's typed error, only when the instance is
	// known not to be running (stopped, terminated, gone); a failure to
	// find out is not an answer and returns nil.
	Running(ctx context.Context) error
	// Prune drops the journal lines the runtime has outlived (current is the
	// caller's view; an implementation may read the identity again, under
	// the box lock).
	Prune(ctx context.Context, current string) error
}

// LedgerOutcome is how one issued restart ended.
type LedgerOutcome string

// Outcomes.
const (
	LedgerRestarted LedgerOutcome = "restarted"
	LedgerAlready   LedgerOutcome = "already"    // applied by an earlier attempt: this one only confirmed it
	LedgerNotNeeded LedgerOutcome = "not-needed" // the box owed nothing when it was issued
	LedgerFailed    LedgerOutcome = "failed"
)

// ReadRestartFacts reads a workspace's facts: the store's, then the box's.
func ReadRestartFacts(ctx context.Context, l Ledger, b BoxSide) (RestartFacts, error) {
	sf, err := l.Facts(ctx)
	if err != nil {
		return RestartFacts{}, err
	}
	bs, err := b.State(ctx)
	if err != nil {
		return RestartFacts{}, err
	}
	return RestartFacts{
		PendingSince: sf.PendingSince, MarkIdentities: sf.MarkIdentities, LatestMark: sf.LatestMark,
		CurrentIdentity: bs.Identity, JournalRead: true, Journal: bs.Journal,
		LegacyMarks: sf.LegacyMarks, InFlight: sf.InFlight, ReadAt: sf.ReadAt,
	}, nil
}

// RestartRequest asks RunRestart for the restart a workspace owes.
type RestartRequest struct {
	// RestartID names the restart this attempt would issue; unique per
	// attempt (a retry that finds it in flight adopts it).
	RestartID string
	Mode      string
	Reason    string
	// Attempt is the activity attempt (1, 2, ...): a restart command that
	// ran and failed is retried by later attempts only a few times.
	Attempt int32
	// RebootGrace is how long a reboot issued without a visible effect is
	// waited for before it is issued again (EC2 hard-reboots an instance
	// that has not shut down in about four minutes).
	RebootGrace time.Duration
	// Tick is called while waiting (for heartbeats).
	Tick func()
}

// RestartRun is what RunRestart did: the restarts it issued or adopted, in order.
type RestartRun struct {
	Restarts []SeenRestart
	// Decision is the last decision, when nothing (more) was owed.
	Decision RestartDecision
}

// SeenRestart is one restart RunRestart saw through.
type SeenRestart struct {
	RestartID      string
	Mode           string
	Outcome        LedgerOutcome
	IdentityBefore string
	IdentityAfter  string
	Adopted        bool // issued by another attempt or run
}

// Restarted reports whether the box's runtime restarted for r's restarts
// (by this attempt or by the one it adopted).
func (r RestartRun) Restarted() bool {
	for _, d := range r.Restarts {
		if d.Outcome == LedgerRestarted || d.Outcome == LedgerAlready {
			return true
		}
	}
	return false
}

// RestartCommandError is a restart command that ran on the box and failed.
// Permanent marks the failures retrying cannot mend: the command is missing
// or not executable (126, 127), or it has failed on every one of
// MaxRestartCommandAttempts attempts (a refused sudo, a broken unit).
type RestartCommandError struct {
	Status    int
	Message   string
	Permanent bool
}

func (e *RestartCommandError) Error() string {
	return fmt.Sprintf("restart command exited %d: %s", e.Status, e.Message)
}

// MaxRestartCommandAttempts bounds the attempts of a restart command that runs and
// fails: enough to ride out a unit that fails to start once.
const MaxRestartCommandAttempts = 3

// RunRestart sees a workspace's owed restart through, exactly once: it adopts a
// restart already in flight (whoever issued it), or issues one when the
// facts owe it, and completes it once the runtime's identity has changed.
// It loops while something is owed, so a swap that landed during the
// restart gets its own.
//
// Idempotent, also against a duplicate attempt running at the same time:
// the store lets one restart be in flight per workspace (the second attempt
// adopts the first's row), the box applies a token once under its exclusive
// lock and refuses to restart when its journal owes nothing, and in reboot
// mode a restart issued by another attempt is waited for, not sent again,
// for RebootGrace.
func RunRestart(ctx context.Context, l Ledger, b BoxSide, req RestartRequest) (RestartRun, error) {
	var res RestartRun
	for i := range 4 {
		f, err := ReadRestartFacts(ctx, l, b)
		if err != nil {
			return res, err
		}
		d := DecideRestart(RestartRound{}, f)
		if !d.Restart() {
			if d.Action == ClearMarks {
				if err := clear(ctx, l, b, f); err != nil {
					return res, err
				}
			}
			res.Decision = d
			return res, nil
		}
		row, created := IssuedRestart{}, false
		if f.InFlight != nil {
			row = *f.InFlight
		} else {
			// Each restart this attempt issues has an id of its own: a
			// swap that landed during one gets the next.
			id := req.RestartID
			if i > 0 {
				id = fmt.Sprintf("%s.%d", req.RestartID, i)
			}
			row, created, err = l.Issue(ctx, IssuedRestart{RestartID: id, Mode: req.Mode, IdentityBefore: f.CurrentIdentity, Force: f.LegacyOwed()}, req.Reason)
			if err != nil {
				return res, err
			}
		}
		done, err := see(ctx, l, b, req, row, created)
		if err != nil {
			return res, err
		}
		res.Restarts = append(res.Restarts, done)
	}
	return res, errors.New("restart: still owed after four restarts in one attempt")
}

// see carries one issued restart to its end and completes its row.
func see(ctx context.Context, l Ledger, b BoxSide, req RestartRequest, row IssuedRestart, created bool) (SeenRestart, error) {
	done := SeenRestart{RestartID: row.RestartID, Mode: row.Mode, IdentityBefore: row.IdentityBefore, Adopted: !created}
	if row.Mode == "" {
		done.Mode = ModeRuntime
	}
	var err error
	switch done.Mode {
	case ModeReboot:
		done.Outcome, done.IdentityAfter, err = reboot(ctx, l, b, req, row, created)
	default:
		done.Outcome, done.IdentityAfter, err = restartRuntime(ctx, l, b, req, row)
	}
	if err != nil {
		return done, err
	}
	if done.Outcome == LedgerFailed {
		return done, nil
	}
	if err := l.Complete(ctx, row.RestartID, done.IdentityAfter, done.Outcome); err != nil {
		return done, err
	}
	return done, nil
}

func restartRuntime(ctx context.Context, l Ledger, b BoxSide, req RestartRequest, row IssuedRestart) (LedgerOutcome, string, error) {
	reply, err := b.RestartRuntime(ctx, row.RestartID, row.Force)
	if err != nil {
		return "", "", err // the row stays in flight: the next attempt sends the same token
	}
	switch reply.Result {
	case LedgerNotNeeded:
		return LedgerNotNeeded, reply.Identity, nil
	case LedgerFailed:
		cerr := &RestartCommandError{Status: reply.Status, Message: reply.Message}
		cerr.Permanent = reply.Status == 126 || reply.Status == 127 || req.Attempt >= MaxRestartCommandAttempts
		if err := l.Fail(ctx, row.RestartID, cerr.Error()); err != nil {
			return "", "", err
		}
		return "", "", cerr
	}
	// The identity the box applied the token under, not the row's: the
	// runtime may have restarted for some other reason since the row was
	// issued.
	before := reply.Before
	if before == "" {
		before = row.IdentityBefore
	}
	if reply.Identity != before {
		return reply.Result, reply.Identity, nil
	}
	// The command returned before the new runtime showed: wait for it.
	after, err := waitForNewIdentity(ctx, b, before, 0, req.Tick)
	return reply.Result, after, err
}

func reboot(ctx context.Context, l Ledger, b BoxSide, req RestartRequest, row IssuedRestart, created bool) (LedgerOutcome, string, error) {
	if created {
		// A restart may have completed between the facts and the issue:
		// look again before sending a reboot.
		f, err := ReadRestartFacts(ctx, l, b)
		if err != nil {
			return "", "", err
		}
		if !DecideRestart(RestartRound{}, withoutInFlight(f)).Restart() {
			return LedgerNotNeeded, f.CurrentIdentity, nil
		}
		if err := b.Reboot(ctx); err != nil {
			return "", "", err
		}
		after, err := waitForNewIdentity(ctx, b, row.IdentityBefore, 0, req.Tick)
		if err != nil {
			return "", "", err
		}
		return LedgerRestarted, after, prune(ctx, b, after)
	}
	// Issued by another attempt: wait for it, up to the grace since it was
	// issued, before counting it as lost and issuing again.
	grace := req.RebootGrace - row.Age
	if grace < time.Second {
		grace = time.Second
	}
	after, err := waitForNewIdentity(ctx, b, row.IdentityBefore, grace, req.Tick)
	if errors.Is(err, errNoChange) {
		if err := l.Fail(ctx, row.RestartID, fmt.Sprintf("no reboot seen within %s of the request", req.RebootGrace)); err != nil {
			return "", "", err
		}
		return LedgerFailed, "", nil
	}
	if err != nil {
		return "", "", err
	}
	return LedgerAlready, after, prune(ctx, b, after)
}

func withoutInFlight(f RestartFacts) RestartFacts {
	f.InFlight = nil
	return f
}

func prune(ctx context.Context, b BoxSide, current string) error {
	return b.Prune(ctx, current)
}

func clear(ctx context.Context, l Ledger, b BoxSide, f RestartFacts) error {
	if len(f.Journal) > 0 {
		if err := b.Prune(ctx, f.CurrentIdentity); err != nil {
			return err
		}
	}
	return l.Clear(ctx, f.ReadAt)
}

var errNoChange = errors.New("runtime identity did not change")

// waitForNewIdentity polls the box until its runtime identity differs from
// old. A box that cannot be reached is restarting (or rebooting); a box
// that is no longer running ends the wait with the box's typed error. With
// a bound, errNoChange when it passes with the old identity still seen.
func waitForNewIdentity(ctx context.Context, b BoxSide, old string, bound time.Duration, tick func()) (string, error) {
	var deadline <-chan time.Time
	if bound > 0 {
		t := time.NewTimer(bound)
		defer t.Stop()
		deadline = t.C
	}
	var last error // of the latest poll: nil when the box answered
	for {
		st, err := b.State(ctx)
		last = err
		if err == nil && st.Identity != old {
			return st.Identity, nil
		}
		if err != nil {
			if rerr := b.Running(ctx); rerr != nil {
				return "", rerr
			}
		}
		if tick != nil {
			tick()
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return "", fmt.Errorf("wait for a new runtime identity: %w (last error: %v)", ctx.Err(), last)
			}
			return "", fmt.Errorf("wait for a new runtime identity: %w", ctx.Err())
		case <-deadline:
			if last == nil {
				return "", errNoChange
			}
			deadline = nil // it does not answer: it is going down; keep waiting
		case <-time.After(time.Second):
		}
	}
}
