package reconcile

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseJournal(t *testing.T) {
	t.Parallel()
	got := ParseJournal("gh r1\n\ncode-review r2 with spaces\nbroken\n")
	require.Equal(t, []JournalEntry{{"gh", "r1"}, {"code-review", "r2 with spaces"}, {"broken", ""}}, got)
	require.Empty(t, ParseJournal(""))
}

func TestDecide(t *testing.T) {
	t.Parallel()
	since := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	journal := func(f RestartFacts) RestartFacts { f.JournalRead = true; return f }
	tests := []struct {
		desc   string
		round  RestartRound
		facts  RestartFacts
		action RestartAction
		code   RestartCode
		reason string
	}{
		// With the box's journal.
		{"nothing delivered, nothing pending", RestartRound{Present: 5}, journal(RestartFacts{CurrentIdentity: "r1"}),
			NoRestart, CodeNothingDelivered, "5 plugin(s) already on the box"},
		{"delivered now, same runtime", RestartRound{Delivered: 2, Present: 3}, journal(RestartFacts{PendingSince: &since, MarkIdentities: []string{"r1", "r1"}, CurrentIdentity: "r1", Journal: []JournalEntry{{"a", "r1"}, {"a", "r1"}, {"b", "r1"}}}),
			DoRestart, CodeDelivered, "2 plugin(s) delivered: a, b not yet loaded"},
		{"owed from an earlier run", RestartRound{Present: 5}, journal(RestartFacts{PendingSince: &since, CurrentIdentity: "r1", Journal: []JournalEntry{{"a", "r1"}}}),
			DoRestart, CodeOwed, "pending since 2026-11-27T10:00:00Z"},
		{"an unreadable line", RestartRound{}, journal(RestartFacts{CurrentIdentity: "r2", Journal: []JournalEntry{{"a", "r1"}, {"b", ""}}}),
			DoRestart, CodeUnverified, "not verified: b"},
		{"runtime restarted after every swap", RestartRound{Present: 5}, journal(RestartFacts{PendingSince: &since, CurrentIdentity: "r3", Journal: []JournalEntry{{"a", "r1"}, {"b", "r2"}}}),
			ClearMarks, CodeRuntimeRestarted, "already restarted"},
		{"runtime restarted between two swaps", RestartRound{Delivered: 2}, journal(RestartFacts{CurrentIdentity: "r2", Journal: []JournalEntry{{"a", "r1"}, {"b", "r2"}}}),
			DoRestart, CodeDelivered, "b not yet loaded"},
		{"marks but nothing swapped (an install failed before its swap)", RestartRound{}, journal(RestartFacts{PendingSince: &since, MarkIdentities: []string{""}, CurrentIdentity: "r1"}),
			ClearMarks, CodeUnchanged, "nothing was swapped"},
		{"delivered, bundle already there", RestartRound{Delivered: 1}, journal(RestartFacts{CurrentIdentity: "r1"}),
			NoRestart, CodeUnchanged, "nothing swapped"},
		{"a restart in flight is adopted", RestartRound{}, journal(RestartFacts{CurrentIdentity: "r1", InFlight: &IssuedRestart{RestartID: "x", Age: 3 * time.Second}}),
			DoRestart, CodeInFlight, "issued 3s ago"},
		{"a legacy mark sealed with the current runtime", RestartRound{}, journal(RestartFacts{CurrentIdentity: "r1", LegacyMarks: []string{"r1"}}),
			DoRestart, CodeOwed, "marks from before the journal"},
		{"a legacy mark the runtime outlived", RestartRound{}, journal(RestartFacts{PendingSince: &since, MarkIdentities: []string{"r0"}, CurrentIdentity: "r1", LegacyMarks: []string{"r0"}}),
			ClearMarks, CodeUnchanged, "nothing was swapped"},
		{"dry run that would deliver", RestartRound{Delivered: 1, DryRun: true}, journal(RestartFacts{CurrentIdentity: "r1"}),
			DoRestart, CodePlanned, "1 plugin(s) to deliver"},
		{"a removal swapped", RestartRound{Removed: 1, Present: 2}, journal(RestartFacts{CurrentIdentity: "r1", Journal: []JournalEntry{{"d", "r1"}, {"d", "r1"}}}),
			DoRestart, CodeDelivered, "0 plugin(s) delivered, 1 removed: d not yet loaded"},
		{"dry run that would remove", RestartRound{Removed: 1, Present: 2, DryRun: true}, journal(RestartFacts{CurrentIdentity: "r1"}),
			DoRestart, CodePlanned, "0 plugin(s) to deliver, 1 to remove"},
		{"a removal of a plugin the box did not have", RestartRound{Removed: 1}, journal(RestartFacts{CurrentIdentity: "r1"}),
			NoRestart, CodeUnchanged, "found the plugin gone"},
		// Histories recorded before the journal decide as they did.
		{"marks: nothing delivered, nothing pending", RestartRound{Present: 5}, RestartFacts{},
			NoRestart, CodeNothingDelivered, "5 plugin(s) already on the box"},
		{"marks: delivered now, same runtime", RestartRound{Delivered: 2, Present: 3}, RestartFacts{PendingSince: &since, MarkIdentities: []string{"r1", "r1"}, CurrentIdentity: "r1"},
			DoRestart, CodeDelivered, "2 plugin(s) delivered"},
		{"marks: never verified", RestartRound{Present: 5}, RestartFacts{PendingSince: &since, MarkIdentities: []string{""}, CurrentIdentity: "r2"},
			DoRestart, CodeUnverified, "not verified"},
		{"marks: runtime restarted after every delivery", RestartRound{Present: 5}, RestartFacts{PendingSince: &since, MarkIdentities: []string{"r1", "r2"}, CurrentIdentity: "r3"},
			ClearMarks, CodeRuntimeRestarted, "already restarted"},
		{"marks: pending flag without marks", RestartRound{Present: 1}, RestartFacts{PendingSince: &since, CurrentIdentity: "r1"},
			DoRestart, CodeOwed, "owed"},
		{"marks: delivered but no mark found", RestartRound{Delivered: 1}, RestartFacts{},
			DoRestart, CodeNoMark, "to be safe"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got := DecideRestart(tt.round, tt.facts)
			require.Equal(t, tt.action, got.Action, got.Reason)
			require.Equal(t, tt.code, got.Code, got.Reason)
			require.Contains(t, got.Reason, tt.reason)
		})
	}
}

// fakes: a box and a ledger in memory, with the protocol's rules (one
// restart in flight per workspace; a token applied once, only when owed)
// and a record of the runtime's restarts.

type fakeBox struct {
	mu          sync.Mutex
	identity    string
	journal     []JournalEntry
	token       string
	tokenBefore string
	restarts    int
	reboots     int
	// rebootAfter: a reboot changes the identity this long after it is
	// asked for; unreachable says whether the box answers meanwhile.
	rebootAfter time.Duration
	failNext    int
	failStatus  int
	gen         int
}

func (b *fakeBox) swap(plugin string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.journal = append(b.journal, JournalEntry{plugin, b.identity}, JournalEntry{plugin, b.identity})
}

func (b *fakeBox) newIdentity() {
	b.gen++
	b.identity = fmt.Sprintf("r%d", b.gen+1)
}

func (b *fakeBox) State(context.Context) (BoxState, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return BoxState{Identity: b.identity, Journal: append([]JournalEntry(nil), b.journal...)}, nil
}

func (b *fakeBox) RestartRuntime(_ context.Context, token string, force bool) (RestartReply, error) {
	b.mu.Lock() // the box's exclusive lock
	defer b.mu.Unlock()
	if b.token == token {
		return RestartReply{Result: LedgerAlready, Before: b.tokenBefore, Identity: b.identity}, nil
	}
	f := RestartFacts{JournalRead: true, Journal: b.journal, CurrentIdentity: b.identity}
	if len(f.Owed()) == 0 && !force {
		return RestartReply{Result: LedgerNotNeeded, Identity: b.identity}, nil
	}
	if b.failNext > 0 {
		b.failNext--
		return RestartReply{Result: LedgerFailed, Status: b.failStatus, Message: "sudo: a password is required"}, nil
	}
	b.token, b.tokenBefore = token, b.identity
	time.Sleep(5 * time.Millisecond) // a restart takes a while, under the lock
	b.restarts++
	b.newIdentity()
	b.journal = nil
	return RestartReply{Result: LedgerRestarted, Before: b.tokenBefore, Identity: b.identity}, nil
}

func (b *fakeBox) Reboot(context.Context) error {
	b.mu.Lock()
	b.reboots++
	after := b.rebootAfter
	b.mu.Unlock()
	time.AfterFunc(after, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.restarts++
		b.newIdentity()
	})
	return nil
}

func (b *fakeBox) Running(context.Context) error { return nil }

func (b *fakeBox) Prune(_ context.Context, current string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var keep []JournalEntry
	for _, e := range b.journal {
		if e.Identity == current {
			keep = append(keep, e)
		}
	}
	b.journal = keep
	return nil
}

type fakeLedger struct {
	mu    sync.Mutex
	rows  []*row
	clock time.Time
}

type row struct {
	IssuedRestart
	at      time.Time
	done    bool
	outcome LedgerOutcome
}

func (l *fakeLedger) now() time.Time { l.clock = l.clock.Add(time.Millisecond); return l.clock }

func (l *fakeLedger) Facts(context.Context) (LedgerFacts, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := LedgerFacts{ReadAt: l.now()}
	for _, r := range l.rows {
		if !r.done {
			in := r.IssuedRestart
			in.Age = l.clock.Sub(r.at)
			f.InFlight = &in
		}
	}
	return f, nil
}

func (l *fakeLedger) Issue(_ context.Context, in IssuedRestart, _ string) (IssuedRestart, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.rows {
		if !r.done {
			return r.IssuedRestart, false, nil
		}
	}
	for _, r := range l.rows {
		if r.RestartID == in.RestartID {
			return IssuedRestart{}, false, errors.New("restart id already used")
		}
	}
	l.rows = append(l.rows, &row{IssuedRestart: in, at: l.now()})
	return in, true, nil
}

func (l *fakeLedger) Complete(_ context.Context, id, _ string, outcome LedgerOutcome) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.rows {
		if r.RestartID == id {
			r.done, r.outcome = true, outcome
		}
	}
	return nil
}

func (l *fakeLedger) Fail(ctx context.Context, id, _ string) error {
	return l.Complete(ctx, id, "", LedgerFailed)
}

func (l *fakeLedger) Clear(context.Context, time.Time) error { return nil }

func newFakes() (*fakeBox, *fakeLedger) {
	return &fakeBox{identity: "r1"}, &fakeLedger{clock: time.Unix(0, 0)}
}

func TestRunRestartsOnceForConcurrentAttempts(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{ModeRuntime, ModeReboot} {
		t.Run(mode, func(t *testing.T) {
			box, ledger := newFakes()
			box.rebootAfter = 30 * time.Millisecond
			box.swap("a")
			var wg sync.WaitGroup
			results := make([]RestartRun, 4)
			for i := range results {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var err error
					results[i], err = RunRestart(context.Background(), ledger, box, RestartRequest{RestartID: fmt.Sprintf("attempt-%d", i), Mode: mode, RebootGrace: time.Minute})
					require.NoError(t, err)
				}()
			}
			wg.Wait()
			require.Equal(t, 1, box.restarts, "four attempts at once, one restart")
			require.Len(t, ledger.rows, 1, "one ledger row: the others adopted it")
			for _, r := range results {
				require.True(t, r.Restarted())
			}
			again, err := RunRestart(context.Background(), ledger, box, RestartRequest{RestartID: "later", Mode: mode})
			require.NoError(t, err)
			require.Empty(t, again.Restarts, "nothing owed any more")
			require.Equal(t, 1, box.restarts)
		})
	}
}

func TestRunAdoptsARestartInFlight(t *testing.T) {
	t.Parallel()
	box, ledger := newFakes()
	box.swap("a")
	// An attempt issued a restart and died before sending it.
	_, created, err := ledger.Issue(context.Background(), IssuedRestart{RestartID: "dead", Mode: ModeRuntime, IdentityBefore: "r1"}, "test")
	require.NoError(t, err)
	require.True(t, created)
	res, err := RunRestart(context.Background(), ledger, box, RestartRequest{RestartID: "retry", Mode: ModeRuntime})
	require.NoError(t, err)
	require.Len(t, res.Restarts, 1)
	require.Equal(t, "dead", res.Restarts[0].RestartID, "the retry sent the token it found in flight")
	require.True(t, res.Restarts[0].Adopted)
	require.Equal(t, 1, box.restarts)
	// The same token again (an attempt that timed out but lives on) is
	// applied once.
	reply, err := box.RestartRuntime(context.Background(), "dead", false)
	require.NoError(t, err)
	require.Equal(t, LedgerAlready, reply.Result)
	require.Equal(t, 1, box.restarts)
}

func TestRunGivesASwapDuringTheRestartItsOwn(t *testing.T) {
	t.Parallel()
	box, ledger := newFakes()
	box.swap("a")
	res, err := RunRestart(context.Background(), ledger, box, RestartRequest{RestartID: "one", Mode: ModeRuntime})
	require.NoError(t, err)
	require.Len(t, res.Restarts, 1)
	box.swap("b") // the next round's delivery
	res, err = RunRestart(context.Background(), ledger, box, RestartRequest{RestartID: "two", Mode: ModeRuntime})
	require.NoError(t, err)
	require.Len(t, res.Restarts, 1)
	require.Equal(t, LedgerRestarted, res.Restarts[0].Outcome)
	require.Equal(t, 2, box.restarts)
	require.Len(t, ledger.rows, 2, "each round has its own row")
}

func TestRunWaitsForAnIssuedRebootWithinItsGrace(t *testing.T) {
	t.Parallel()
	box, ledger := newFakes()
	box.swap("a")
	box.rebootAfter = 50 * time.Millisecond
	// The first attempt sent RebootInstances and died.
	_, _, err := ledger.Issue(context.Background(), IssuedRestart{RestartID: "sent", Mode: ModeReboot, IdentityBefore: "r1"}, "test")
	require.NoError(t, err)
	require.NoError(t, box.Reboot(context.Background()))
	res, err := RunRestart(context.Background(), ledger, box, RestartRequest{RestartID: "retry", Mode: ModeReboot, RebootGrace: time.Minute})
	require.NoError(t, err)
	require.Equal(t, 1, box.reboots, "the retry did not reboot again")
	require.Equal(t, 1, box.restarts)
	require.Equal(t, LedgerAlready, res.Restarts[0].Outcome)
	require.Empty(t, box.journal, "lines the reboot settled are pruned")

	// Issued but never sent: after the grace it is issued again.
	box.swap("b")
	_, _, err = ledger.Issue(context.Background(), IssuedRestart{RestartID: "lost", Mode: ModeReboot, IdentityBefore: box.identity}, "test")
	require.NoError(t, err)
	res, err = RunRestart(context.Background(), ledger, box, RestartRequest{RestartID: "again", Mode: ModeReboot, RebootGrace: 50 * time.Millisecond})
	require.NoError(t, err)
	require.Equal(t, 2, box.reboots)
	require.Equal(t, 2, box.restarts)
	require.Equal(t, []LedgerOutcome{LedgerFailed, LedgerRestarted}, []LedgerOutcome{res.Restarts[0].Outcome, res.Restarts[1].Outcome})
}

func TestRunStopsRetryingACommandThatFails(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		status    int
		attempt   int32
		permanent bool
	}{{127, 1, true}, {126, 1, true}, {1, 1, false}, {1, MaxRestartCommandAttempts, true}} {
		t.Run(fmt.Sprintf("exit %d attempt %d", tt.status, tt.attempt), func(t *testing.T) {
			box, ledger := newFakes()
			box.swap("a")
			box.failNext, box.failStatus = 1, tt.status
			_, err := RunRestart(context.Background(), ledger, box, RestartRequest{RestartID: "x", Mode: ModeRuntime, Attempt: tt.attempt})
			var cerr *RestartCommandError
			require.True(t, errors.As(err, &cerr))
			require.Equal(t, tt.permanent, cerr.Permanent)
			require.Contains(t, cerr.Error(), "sudo: a password is required")
			require.Equal(t, 0, box.restarts)
			// The row is closed as failed: the next attempt issues anew.
			res, err := RunRestart(context.Background(), ledger, box, RestartRequest{RestartID: "y", Mode: ModeRuntime, Attempt: tt.attempt + 1})
			require.NoError(t, err)
			require.Equal(t, "y", res.Restarts[0].RestartID)
			require.Equal(t, 1, box.restarts)
		})
	}
}

// A swap that lands while a restart runs (a delivery that outlived its
// run) gets a restart of its own, in the same attempt, under its own id.
func TestRunRestartsAgainForASwapDuringTheRestart(t *testing.T) {
	t.Parallel()
	box, ledger := newFakes()
	box.swap("a")
	late := &lateSwapBox{fakeBox: box}
	res, err := RunRestart(context.Background(), ledger, late, RestartRequest{RestartID: "x", Mode: ModeRuntime})
	require.NoError(t, err)
	require.Len(t, res.Restarts, 2)
	require.Equal(t, []string{"x", "x.1"}, []string{res.Restarts[0].RestartID, res.Restarts[1].RestartID})
	require.Equal(t, 2, box.restarts)
	require.Len(t, ledger.rows, 2)
}

// lateSwapBox swaps a plugin right after its first restart.
type lateSwapBox struct {
	*fakeBox
	once sync.Once
}

func (b *lateSwapBox) RestartRuntime(ctx context.Context, token string, force bool) (RestartReply, error) {
	r, err := b.fakeBox.RestartRuntime(ctx, token, force)
	b.once.Do(func() { b.swap("late") })
	return r, err
}
