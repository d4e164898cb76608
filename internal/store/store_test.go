package store_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/migrations"
)

func TestMain(m *testing.M) { pgcluster.TestMain(m) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func open(t *testing.T) *store.Store {
	t.Helper()
	dsn := pgcluster.NewTestDatabase(t)
	_, err := migrations.Apply(ctx(t), dsn)
	require.NoError(t, err)
	s, err := store.Open(ctx(t), dsn)
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return s
}

func addWorkspace(t *testing.T, s *store.Store, id, instance string) {
	t.Helper()
	require.NoError(t, s.UpsertWorkspace(ctx(t), store.Workspace{Box: reconcile.Box{ID: id, InstanceID: instance, Region: "us-east-1"}}))
}

func TestMigrationsApplyOnceWhenRacing(t *testing.T) {
	dsn := pgcluster.NewTestDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	versions := make([]int32, 4)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); versions[i], errs[i] = migrations.Apply(ctx(t), dsn) }()
	}
	wg.Wait()
	for i := range errs {
		require.NoError(t, errs[i])
		require.Equal(t, migrations.Latest(), versions[i])
	}
}

// A database with restarts from before the per-restart ledger: completed
// rows are kept as restarted, of a workspace's unfinished rows only the
// latest stays in flight, and the way back down works.
func TestRestartLedgerMigrationKeepsHistory(t *testing.T) {
	dsn := pgcluster.NewTestDatabase(t)
	v, err := migrations.ApplyTo(ctx(t), dsn, 1)
	require.NoError(t, err)
	require.Equal(t, int32(1), v)
	conn, err := pgx.Connect(ctx(t), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	_, err = conn.Exec(ctx(t), `
insert into workspaces (id, instance_id, region) values ('ws-1', 'i-0123456789abcdef0', 'us-east-1');
insert into restart_marks (workspace_id, plugin_name, identity_after) values ('ws-1', 'a', 'id-1');
insert into box_restarts (workspace_id, workflow_id, run_id, reason, mode, requested_at, completed_at, identity_before, identity_after) values
  ('ws-1', 'reconcile:ws-1', 'run-1', 'x', 'runtime', now() - interval '3 hours', now() - interval '3 hours', 'id-0', 'id-1'),
  ('ws-1', 'reconcile:ws-1', 'run-2', 'x', 'runtime', now() - interval '2 hours', null, 'id-1', null),
  ('ws-1', 'reconcile:ws-1', 'run-3', 'x', 'runtime', now() - interval '1 hours', null, 'id-1', null)`)
	require.NoError(t, err)
	_, err = migrations.Apply(ctx(t), dsn)
	require.NoError(t, err)
	s, err := store.Open(ctx(t), dsn)
	require.NoError(t, err)
	t.Cleanup(s.Close)
	ledger, err := s.Restarts(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Len(t, ledger, 3)
	require.Equal(t, "reconcile:ws-1/run-1", ledger[0].RestartID)
	require.Equal(t, "restarted", ledger[0].Outcome)
	require.Equal(t, "failed", ledger[1].Outcome)
	require.Contains(t, ledger[1].Error, "superseded")
	st, err := s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Equal(t, "reconcile:ws-1/run-3", st.InFlight.RestartID, "the latest unfinished one is adopted")
	require.False(t, st.Marks[0].Journaled, "an old mark still decides by its seal")

	v, err = migrations.ApplyTo(ctx(t), dsn, 1)
	require.NoError(t, err)
	require.Equal(t, int32(1), v)
}

func TestWorkspaceDefaultsAndUpsert(t *testing.T) {
	s := open(t)
	_, err := s.Workspace(ctx(t), "nope")
	require.ErrorIs(t, err, store.ErrNotFound)

	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")
	w, err := s.Workspace(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Equal(t, "ubuntu", w.OSUser)
	require.Equal(t, "/opt/agent/plugins", w.PluginRoot)
	require.Empty(t, w.HostKey)
	require.Nil(t, w.RestartPendingSince)

	// Re-registering changes coordinates, keeps the pinned key.
	require.NoError(t, s.RecordHostKey(ctx(t), "i-0123456789abcdef0", "ssh-ed25519 AAAA"))
	require.NoError(t, s.UpsertWorkspace(ctx(t), store.Workspace{Box: reconcile.Box{ID: "ws-1", InstanceID: "i-0123456789abcdef0", Region: "eu-west-1", OSUser: "ec2-user"}}))
	w, err = s.Workspace(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Equal(t, "eu-west-1", w.Region)
	require.Equal(t, "ec2-user", w.OSUser)
	require.Equal(t, "ssh-ed25519 AAAA", w.HostKey)

	// Moving to another instance drops what belonged to the old one.
	mark(t, s, "ws-1", "gh")
	require.NoError(t, s.UpsertWorkspace(ctx(t), store.Workspace{Box: reconcile.Box{ID: "ws-1", InstanceID: "i-0123456789abcdef9", Region: "eu-west-1"}}))
	w, err = s.Workspace(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Empty(t, w.HostKey)
	require.Nil(t, w.RestartPendingSince)
	st, err := s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Empty(t, st.Marks)

	// Bad ids are refused by the schema.
	require.Error(t, s.UpsertWorkspace(ctx(t), store.Workspace{Box: reconcile.Box{ID: "../x", InstanceID: "i-0123456789abcdef1", Region: "r"}}))
	require.Error(t, s.UpsertWorkspace(ctx(t), store.Workspace{Box: reconcile.Box{ID: "ok", InstanceID: "i-; reboot", Region: "r"}}))
}

func TestRecordHostKeyPinsOnce(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")
	require.NoError(t, s.RecordHostKey(ctx(t), "i-0123456789abcdef0", "ssh-ed25519 AAAA"))
	require.NoError(t, s.RecordHostKey(ctx(t), "i-0123456789abcdef0", "ssh-ed25519 AAAA"), "same key again")
	require.ErrorIs(t, s.RecordHostKey(ctx(t), "i-0123456789abcdef0", "ssh-ed25519 BBBB"), store.ErrHostKeyConflict)
	require.ErrorIs(t, s.RecordHostKey(ctx(t), "i-0fffffffffffffff0", "ssh-ed25519 AAAA"), store.ErrNotFound)
}

func TestRecordTrackingIsAnIdempotentUpsert(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")
	boot := store.Tracking{WorkspaceID: "ws-1", PluginName: "gh", Version: "1.0.0", InstalledVia: "boot", WorkflowID: "wf", RunID: "r1"}
	require.NoError(t, s.RecordTracking(ctx(t), boot))
	require.NoError(t, s.RecordTracking(ctx(t), boot))
	rows, err := s.TrackingRows(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.Equal(t, "boot", rows[0].InstalledVia)
	require.Nil(t, rows[0].DeliveredAt)
	first := rows[0].FirstSeenAt

	// A delivery of a new version.
	del := store.Tracking{WorkspaceID: "ws-1", PluginName: "gh", Version: "2.0.0", Digest: "sha256:aa", InstalledVia: "reconcile", WorkflowID: "wf", RunID: "r2"}
	require.NoError(t, s.RecordTracking(ctx(t), del))
	rows, err = s.TrackingRows(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Equal(t, "reconcile", rows[0].InstalledVia)
	require.NotNil(t, rows[0].DeliveredAt)
	require.Equal(t, "2.0.0", rows[0].Version)
	require.Equal(t, "r2", rows[0].RunID)
	require.Equal(t, first, rows[0].FirstSeenAt)

	// Found again later at that version: still ours, digest kept.
	seen := store.Tracking{WorkspaceID: "ws-1", PluginName: "gh", Version: "2.0.0", InstalledVia: "boot", WorkflowID: "wf", RunID: "r3"}
	require.NoError(t, s.RecordTracking(ctx(t), seen))
	rows, err = s.TrackingRows(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Equal(t, "reconcile", rows[0].InstalledVia)
	require.Equal(t, "sha256:aa", rows[0].Digest)
	require.NotNil(t, rows[0].DeliveredAt)

	// Found at another version (installed by boot): boot, no delivery time.
	other := store.Tracking{WorkspaceID: "ws-1", PluginName: "gh", Version: "3.0.0", InstalledVia: "boot", WorkflowID: "wf", RunID: "r4"}
	require.NoError(t, s.RecordTracking(ctx(t), other))
	rows, err = s.TrackingRows(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Equal(t, "boot", rows[0].InstalledVia)
	require.Nil(t, rows[0].DeliveredAt)
	require.Empty(t, rows[0].Digest)
}

func TestRestartMarksAndLedger(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")

	mark(t, s, "ws-1", "a")
	mark(t, s, "ws-1", "b")
	require.NoError(t, s.SealRestartMark(ctx(t), "ws-1", "a", "id-1"))
	st, err := s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	require.NotNil(t, st.PendingSince)
	require.Len(t, st.Marks, 2)
	require.Equal(t, "id-1", st.Marks[0].IdentityAfter)
	require.Empty(t, st.Marks[1].IdentityAfter, "b's swap not verified")
	since := *st.PendingSince

	// Marking again keeps the first pending time and unseals the mark.
	mark(t, s, "ws-1", "a")
	st, err = s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Equal(t, since, *st.PendingSince)
	require.Empty(t, st.Marks[0].IdentityAfter)

	r := store.Restart{RestartID: "reconcile:ws-1/run-1/restart-1/1", WorkspaceID: "ws-1", WorkflowID: "reconcile:ws-1", RunID: "run-1", Reason: "2 delivered", Mode: "runtime", IdentityBefore: "id-1"}
	got, created, err := s.IssueRestart(ctx(t), r)
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, "id-1", got.IdentityBefore)
	st, err = s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	require.NotNil(t, st.InFlight)
	require.Equal(t, r.RestartID, st.InFlight.RestartID)
	// Another attempt (or run) finds it in flight and adopts it.
	r2 := r
	r2.RestartID, r2.IdentityBefore = "reconcile:ws-1/run-2/restart-1/1", "id-2"
	again, created, err := s.IssueRestart(ctx(t), r2)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, r.RestartID, again.RestartID)
	require.Equal(t, "id-1", again.IdentityBefore)
	require.Equal(t, got.RequestedAt, again.RequestedAt)

	require.NoError(t, s.CompleteRestart(ctx(t), "ws-1", r.RestartID, "id-2", "restarted"))
	require.NoError(t, s.CompleteRestart(ctx(t), "ws-1", r.RestartID, "id-3", "already"), "completing twice")
	st, err = s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Nil(t, st.PendingSince)
	require.Empty(t, st.Marks)
	require.Nil(t, st.InFlight)

	// The next round issues its own row; a failed one frees the way.
	r3 := r
	r3.RestartID = "reconcile:ws-1/run-1/restart-2/1"
	_, created, err = s.IssueRestart(ctx(t), r3)
	require.NoError(t, err)
	require.True(t, created)
	require.NoError(t, s.FailRestart(ctx(t), "ws-1", r3.RestartID, "restart command exited 127"))
	ledger, err := s.Restarts(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Len(t, ledger, 2)
	require.Equal(t, "id-2", ledger[0].IdentityAfter)
	require.Equal(t, "restarted", ledger[0].Outcome)
	require.NotNil(t, ledger[0].CompletedAt)
	require.Equal(t, "failed", ledger[1].Outcome)
	require.Contains(t, ledger[1].Error, "127")
}

// Two attempts issuing at the same moment get one row between them.
func TestIssueRestartIsOnePerWorkspaceUnderRaces(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, _, err := s.IssueRestart(ctx(t), store.Restart{RestartID: fmt.Sprintf("attempt-%d", i), WorkspaceID: "ws-1", WorkflowID: "w", RunID: "r", Reason: "x", Mode: "runtime", IdentityBefore: "id-1"})
			require.NoError(t, err)
			ids[i] = got.RestartID
		}()
	}
	wg.Wait()
	for _, id := range ids {
		require.Equal(t, ids[0], id)
	}
	ledger, err := s.Restarts(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Len(t, ledger, 1)
}

// A mark cleared by a restart while its delivery lived on is written again
// when the delivery seals it: what it swapped may postdate that restart.
func TestSealAfterAClearWritesTheMarkAgain(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")
	mark(t, s, "ws-1", "a")
	st, err := s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	require.True(t, st.Marks[0].Journaled)
	require.NoError(t, s.ClearRestartPending(ctx(t), "ws-1", st.ReadAt))
	require.NoError(t, s.SealRestartMark(ctx(t), "ws-1", "a", "id-9"))
	st, err = s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	require.NotNil(t, st.PendingSince)
	require.Len(t, st.Marks, 1)
	require.Equal(t, "id-9", st.Marks[0].IdentityAfter)
}

func TestClearKeepsMarksMadeAfterTheCutoff(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")
	mark(t, s, "ws-1", "a")
	st, err := s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	cutoff := st.Marks[0].MarkedAt
	time.Sleep(10 * time.Millisecond)
	mark(t, s, "ws-1", "b")

	require.NoError(t, s.ClearRestartPending(ctx(t), "ws-1", cutoff))
	st, err = s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	require.NotNil(t, st.PendingSince, "b still needs its restart")
	require.Len(t, st.Marks, 1)
	require.Equal(t, "b", st.Marks[0].PluginName)
}

func mark(t *testing.T, s *store.Store, ws, plugin string) time.Time {
	t.Helper()
	at, err := s.MarkRestartPending(ctx(t), ws, plugin)
	require.NoError(t, err)
	return at
}

// A delivery that swapped nothing takes its own mark back, and only its own.
func TestUnmarkRemovesOnlyTheMarkItMade(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")
	first := mark(t, s, "ws-1", "a")
	time.Sleep(5 * time.Millisecond)
	second := mark(t, s, "ws-1", "a") // another attempt marked again
	require.NoError(t, s.UnmarkRestartPending(ctx(t), "ws-1", "a", first))
	st, err := s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Len(t, st.Marks, 1, "a later attempt's mark stays")
	require.NoError(t, s.UnmarkRestartPending(ctx(t), "ws-1", "a", second))
	st, err = s.RestartState(ctx(t), "ws-1")
	require.NoError(t, err)
	require.Empty(t, st.Marks)
	require.Nil(t, st.PendingSince)
}

// A finished restart's id is spent: issuing it again is an error, not an
// adoption.
func TestAFinishedRestartIsNotIssuedAgain(t *testing.T) {
	s := open(t)
	addWorkspace(t, s, "ws-1", "i-0123456789abcdef0")
	r := store.Restart{RestartID: "x", WorkspaceID: "ws-1", WorkflowID: "w", RunID: "r", Reason: "x", Mode: "runtime", IdentityBefore: "id-1"}
	_, created, err := s.IssueRestart(ctx(t), r)
	require.NoError(t, err)
	require.True(t, created)
	require.NoError(t, s.CompleteRestart(ctx(t), "ws-1", "x", "id-2", "restarted"))
	_, _, err = s.IssueRestart(ctx(t), r)
	require.ErrorContains(t, err, "finished already")
}
