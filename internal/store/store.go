// Package store is the reconciler's Postgres access: workspaces, tracking
// rows, restart marks and the restart ledger. Every write is an upsert or a
// guarded update, so that running any activity twice leaves the same rows.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// ErrNotFound: no such workspace.
var ErrNotFound = errors.New("not found")

// ErrHostKeyConflict: a different host key is already pinned.
var ErrHostKeyConflict = errors.New("a different host key is already pinned")

// Store is a pgx pool with the reconciler's queries.
type Store struct {
	pool *pgxpool.Pool
}

// Open connects to dsn.
func Open(ctx context.Context, dsn string) (*Store, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	return &Store{pool: pool}, nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Workspace is a workspace: its box, its pending restart and its status.
type Workspace struct {
	reconcile.Box       // HostKey empty: not pinned yet
	RestartPendingSince *time.Time
	Status              string
}

// Defaults of a workspace's box settings.
const (
	DefaultOSUser     = "ubuntu"
	DefaultPluginRoot = "/opt/agent/plugins"
)

// UpsertWorkspace registers a workspace's box or updates its coordinates.
// It keeps the pinned host key and the pending restart of the same instance;
// when the workspace moves to another instance (a re-provisioned box), both
// belong to the old instance and are dropped, unless a host key is given.
func (s *Store) UpsertWorkspace(ctx context.Context, w Workspace) error {
	if w.OSUser == "" {
		w.OSUser = DefaultOSUser
	}
	if w.PluginRoot == "" {
		w.PluginRoot = DefaultPluginRoot
	}
	if w.Status == "" {
		w.Status = "active"
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("upsert workspace %s: %w", w.ID, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var old string
	err = tx.QueryRow(ctx, `select instance_id from workspaces where id = $1 for update`, w.ID).Scan(&old)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("upsert workspace %s: %w", w.ID, err)
	}
	_, err = tx.Exec(ctx, `
insert into workspaces (id, instance_id, region, availability_zone, os_user, plugin_root, host_key, status)
values ($1, $2, $3, $4, $5, $6, nullif($7, ''), $8)
on conflict (id) do update set
  instance_id = excluded.instance_id, region = excluded.region,
  availability_zone = excluded.availability_zone, os_user = excluded.os_user,
  plugin_root = excluded.plugin_root, status = excluded.status,
  host_key = case
    when excluded.host_key is not null then excluded.host_key
    when workspaces.instance_id = excluded.instance_id then workspaces.host_key
    end,
  restart_pending_since = case
    when workspaces.instance_id = excluded.instance_id then workspaces.restart_pending_since
    end,
  updated_at = now()`,
		w.ID, w.InstanceID, w.Region, w.AvailabilityZone, w.OSUser, w.PluginRoot, w.HostKey, w.Status)
	if err != nil {
		return fmt.Errorf("upsert workspace %s: %w", w.ID, err)
	}
	if old != "" && old != w.InstanceID {
		if _, err := tx.Exec(ctx, `delete from restart_marks where workspace_id = $1`, w.ID); err != nil {
			return fmt.Errorf("upsert workspace %s: %w", w.ID, err)
		}
		if _, err := tx.Exec(ctx, `
update box_restarts set completed_at = now(), outcome = 'failed', error = 'the workspace moved to instance ' || $2
where workspace_id = $1 and completed_at is null`, w.ID, w.InstanceID); err != nil {
			return fmt.Errorf("upsert workspace %s: %w", w.ID, err)
		}
	}
	return tx.Commit(ctx)
}

// Workspace loads a workspace.
func (s *Store) Workspace(ctx context.Context, id string) (Workspace, error) {
	var w Workspace
	var hostKey *string
	err := s.pool.QueryRow(ctx, `
select id, instance_id, region, availability_zone, os_user, plugin_root, host_key, restart_pending_since, status
from workspaces where id = $1`, id).Scan(
		&w.ID, &w.InstanceID, &w.Region, &w.AvailabilityZone, &w.OSUser, &w.PluginRoot, &hostKey, &w.RestartPendingSince, &w.Status)
	if errors.Is(err, pgx.ErrNoRows) {
		return w, fmt.Errorf("workspace %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return w, fmt.Errorf("load workspace %s: %w", id, err)
	}
	if hostKey != nil {
		w.HostKey = *hostKey
	}
	return w, nil
}

// RecordHostKey pins a box's host key on first use. Recording the same key
// again is a no-op; a different key is ErrHostKeyConflict.
func (s *Store) RecordHostKey(ctx context.Context, instanceID, key string) error {
	var pinned *string
	err := s.pool.QueryRow(ctx, `
with upd as (
  update workspaces set host_key = $2, updated_at = now()
  where instance_id = $1 and host_key is null
  returning host_key)
select coalesce((select host_key from upd), (select host_key from workspaces where instance_id = $1))`,
		instanceID, key).Scan(&pinned)
	if err != nil {
		return fmt.Errorf("record host key of %s: %w", instanceID, err)
	}
	if pinned == nil {
		return fmt.Errorf("record host key of %s: no workspace has this instance: %w", instanceID, ErrNotFound)
	}
	if *pinned != key {
		return fmt.Errorf("record host key of %s: %w", instanceID, ErrHostKeyConflict)
	}
	return nil
}

// Tracking is one tracking row.
type Tracking struct {
	WorkspaceID    string
	PluginName     string
	Version        string
	Digest         string
	InstalledVia   string // "boot" or "reconcile"
	FirstSeenAt    time.Time
	LastVerifiedAt time.Time
	DeliveredAt    *time.Time
	WorkflowID     string
	RunID          string
}

// RecordTracking upserts a tracking row. A row written for a plugin found on
// the box ("boot") keeps "reconcile" if that same version was delivered by
// us; a delivery ("reconcile") sets delivered_at.
func (s *Store) RecordTracking(ctx context.Context, t Tracking) error {
	_, err := s.pool.Exec(ctx, `
insert into workspace_plugins (workspace_id, plugin_name, version, digest, installed_via, delivered_at, last_workflow_id, last_run_id)
values ($1, $2, $3, $4, $5, case when $5 = 'reconcile' then now() end, $6, $7)
on conflict (workspace_id, plugin_name) do update set
  installed_via = case
    when excluded.installed_via = 'boot' and workspace_plugins.version = excluded.version
      then workspace_plugins.installed_via
    else excluded.installed_via end,
  delivered_at = case
    when excluded.installed_via = 'reconcile' then now()
    when workspace_plugins.version = excluded.version then workspace_plugins.delivered_at
    end,
  version = excluded.version,
  digest = case when excluded.digest <> '' then excluded.digest
    when workspace_plugins.version = excluded.version then workspace_plugins.digest
    else '' end,
  last_verified_at = now(),
  last_workflow_id = excluded.last_workflow_id,
  last_run_id = excluded.last_run_id`,
		t.WorkspaceID, t.PluginName, t.Version, t.Digest, t.InstalledVia, t.WorkflowID, t.RunID)
	if err != nil {
		return fmt.Errorf("record tracking %s/%s: %w", t.WorkspaceID, t.PluginName, err)
	}
	return nil
}

// TrackingRows lists a workspace's tracking rows by plugin name.
func (s *Store) TrackingRows(ctx context.Context, workspaceID string) ([]Tracking, error) {
	rows, err := s.pool.Query(ctx, `
select workspace_id, plugin_name, version, digest, installed_via, first_seen_at, last_verified_at, delivered_at, last_workflow_id, last_run_id
from workspace_plugins where workspace_id = $1 order by plugin_name`, workspaceID)
	if err != nil {
		return nil, fmt.Errorf("tracking rows of %s: %w", workspaceID, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Tracking, error) {
		var t Tracking
		err := r.Scan(&t.WorkspaceID, &t.PluginName, &t.Version, &t.Digest, &t.InstalledVia, &t.FirstSeenAt, &t.LastVerifiedAt, &t.DeliveredAt, &t.WorkflowID, &t.RunID)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("tracking rows of %s: %w", workspaceID, err)
	}
	return out, nil
}

// lockWorkspace takes the workspace's row lock: every transaction that
// changes a workspace's marks or restarts takes it first, so that they
// serialise per workspace in one order (no deadlock, and the pending time
// is never cleared while a mark is being written).
func lockWorkspace(ctx context.Context, tx pgx.Tx, workspaceID string) error {
	_, err := tx.Exec(ctx, `select 1 from workspaces where id = $1 for update`, workspaceID)
	return err
}

// MarkRestartPending records, before a delivery touches the box, that the
// box may need a restart, and returns the mark's time. The mark's identity
// is reset: until SealRestartMark the swap counts as unverified. The mark is
// a hint since the box keeps a journal (journaled): it makes the box be
// looked at, and shows as pending.
func (s *Store) MarkRestartPending(ctx context.Context, workspaceID, pluginName string) (time.Time, error) {
	var at time.Time
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return at, fmt.Errorf("mark restart pending for %s: %w", workspaceID, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := lockWorkspace(ctx, tx, workspaceID); err != nil {
		return at, fmt.Errorf("mark restart pending for %s: %w", workspaceID, err)
	}
	if _, err := tx.Exec(ctx, `
update workspaces set restart_pending_since = coalesce(restart_pending_since, now()), updated_at = now()
where id = $1`, workspaceID); err != nil {
		return at, fmt.Errorf("mark restart pending for %s: %w", workspaceID, err)
	}
	if err := tx.QueryRow(ctx, `
insert into restart_marks (workspace_id, plugin_name, journaled) values ($1, $2, true)
on conflict (workspace_id, plugin_name) do update set marked_at = now(), identity_after = null, journaled = true
returning marked_at`,
		workspaceID, pluginName).Scan(&at); err != nil {
		return at, fmt.Errorf("mark restart pending for %s/%s: %w", workspaceID, pluginName, err)
	}
	return at, tx.Commit(ctx)
}

// UnmarkRestartPending removes the mark made at markedAt by a delivery that
// swapped nothing (the box held the bundle already): nothing is owed for
// it. A mark written again since is kept.
func (s *Store) UnmarkRestartPending(ctx context.Context, workspaceID, pluginName string, markedAt time.Time) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("unmark %s/%s: %w", workspaceID, pluginName, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := lockWorkspace(ctx, tx, workspaceID); err != nil {
		return fmt.Errorf("unmark %s/%s: %w", workspaceID, pluginName, err)
	}
	if _, err := tx.Exec(ctx, `
delete from restart_marks where workspace_id = $1 and plugin_name = $2 and marked_at = $3 and identity_after is null`,
		workspaceID, pluginName, markedAt); err != nil {
		return fmt.Errorf("unmark %s/%s: %w", workspaceID, pluginName, err)
	}
	if err := clearPendingIfNoMarks(ctx, tx, workspaceID); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// SealRestartMark stores the runtime identity read after a plugin was
// swapped in. A mark a restart has cleared meanwhile (a delivery that lived
// on past its run) is written again: what it swapped may postdate that
// restart, and the next reconcile must look.
func (s *Store) SealRestartMark(ctx context.Context, workspaceID, pluginName, identity string) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("seal restart mark %s/%s: %w", workspaceID, pluginName, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := lockWorkspace(ctx, tx, workspaceID); err != nil {
		return fmt.Errorf("seal restart mark %s/%s: %w", workspaceID, pluginName, err)
	}
	if _, err := tx.Exec(ctx, `
update workspaces set restart_pending_since = coalesce(restart_pending_since, now()), updated_at = now()
where id = $1 and restart_pending_since is null`, workspaceID); err != nil {
		return fmt.Errorf("seal restart mark %s/%s: %w", workspaceID, pluginName, err)
	}
	if _, err := tx.Exec(ctx, `
insert into restart_marks (workspace_id, plugin_name, identity_after, journaled) values ($1, $2, $3, true)
on conflict (workspace_id, plugin_name) do update set identity_after = excluded.identity_after`,
		workspaceID, pluginName, identity); err != nil {
		return fmt.Errorf("seal restart mark %s/%s: %w", workspaceID, pluginName, err)
	}
	return tx.Commit(ctx)
}

// Mark is one delivered plugin awaiting a restart.
type Mark struct {
	PluginName    string
	MarkedAt      time.Time
	IdentityAfter string // empty: the swap was not verified
	// Journaled: written since the box keeps a journal, which then decides.
	Journaled bool
}

// RestartState is what the store knows about a box's pending restart.
type RestartState struct {
	PendingSince *time.Time
	Marks        []Mark
	// InFlight is the restart issued and not yet completed, if any.
	InFlight *Restart
	// ReadAt is the store's clock when this was read.
	ReadAt time.Time
}

// RestartState reads a workspace's pending restart, its marks and the
// restart in flight, from one snapshot (ReadAt is its time).
func (s *Store) RestartState(ctx context.Context, workspaceID string) (RestartState, error) {
	var st RestartState
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return st, fmt.Errorf("restart state of %s: %w", workspaceID, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := tx.QueryRow(ctx, `select restart_pending_since, now() from workspaces where id = $1`, workspaceID).Scan(&st.PendingSince, &st.ReadAt); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return st, fmt.Errorf("workspace %s: %w", workspaceID, ErrNotFound)
		}
		return st, fmt.Errorf("restart state of %s: %w", workspaceID, err)
	}
	rows, err := tx.Query(ctx, `
select plugin_name, marked_at, coalesce(identity_after, ''), journaled from restart_marks where workspace_id = $1 order by plugin_name`, workspaceID)
	if err != nil {
		return st, fmt.Errorf("restart marks of %s: %w", workspaceID, err)
	}
	st.Marks, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Mark, error) {
		var m Mark
		err := r.Scan(&m.PluginName, &m.MarkedAt, &m.IdentityAfter, &m.Journaled)
		return m, err
	})
	if err != nil {
		return st, fmt.Errorf("restart marks of %s: %w", workspaceID, err)
	}
	rows, err = tx.Query(ctx, `select `+restartColumns+` from box_restarts where workspace_id = $1 and completed_at is null`, workspaceID)
	if err != nil {
		return st, fmt.Errorf("restart in flight of %s: %w", workspaceID, err)
	}
	inFlight, err := pgx.CollectRows(rows, scanRestart)
	if err != nil {
		return st, fmt.Errorf("restart in flight of %s: %w", workspaceID, err)
	}
	if len(inFlight) > 0 {
		st.InFlight = &inFlight[0]
	}
	return st, tx.Commit(ctx)
}

// Restart is one row of the restart ledger: one restart issued.
type Restart struct {
	RestartID      string
	WorkspaceID    string
	WorkflowID     string
	RunID          string
	Reason         string
	Mode           string
	RequestedAt    time.Time // issued: written before the command is sent
	CompletedAt    *time.Time
	IdentityBefore string
	IdentityAfter  string
	Outcome        string // restarted, already, not-needed, failed; empty while in flight
	Error          string
	Force          bool
}

const restartColumns = `restart_id, workspace_id, workflow_id, run_id, reason, mode, requested_at, completed_at,
  identity_before, coalesce(identity_after, ''), coalesce(outcome, ''), coalesce(error, ''), force`

func scanRestart(r pgx.CollectableRow) (Restart, error) {
	var x Restart
	err := r.Scan(&x.RestartID, &x.WorkspaceID, &x.WorkflowID, &x.RunID, &x.Reason, &x.Mode, &x.RequestedAt, &x.CompletedAt,
		&x.IdentityBefore, &x.IdentityAfter, &x.Outcome, &x.Error, &x.Force)
	return x, err
}

// IssueRestart records a restart before its command is sent, unless the
// workspace has one in flight: then it returns that one, and created is
// false. At most one is in flight per workspace (the workspace row is
// locked, and a unique index backs it), so two attempts running at once
// issue one restart between them. Issuing the same restart_id again
// returns its row.
func (s *Store) IssueRestart(ctx context.Context, r Restart) (Restart, bool, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return r, false, fmt.Errorf("issue restart of %s: %w", r.WorkspaceID, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := lockWorkspace(ctx, tx, r.WorkspaceID); err != nil {
		return r, false, fmt.Errorf("issue restart of %s: %w", r.WorkspaceID, err)
	}
	rows, err := tx.Query(ctx, `select `+restartColumns+` from box_restarts
where (workspace_id = $1 and completed_at is null) or restart_id = $2
order by completed_at nulls first`, r.WorkspaceID, r.RestartID)
	if err != nil {
		return r, false, fmt.Errorf("issue restart of %s: %w", r.WorkspaceID, err)
	}
	existing, err := pgx.CollectRows(rows, scanRestart)
	if err != nil {
		return r, false, fmt.Errorf("issue restart of %s: %w", r.WorkspaceID, err)
	}
	if len(existing) > 0 && existing[0].CompletedAt == nil {
		return existing[0], false, tx.Commit(ctx)
	}
	if len(existing) > 0 {
		// A finished restart is never adopted: its token is spent.
		return r, false, fmt.Errorf("issue restart of %s: restart id %s was issued and finished already", r.WorkspaceID, r.RestartID)
	}
	rows, err = tx.Query(ctx, `
insert into box_restarts (restart_id, workspace_id, workflow_id, run_id, reason, mode, identity_before, force)
values ($1, $2, $3, $4, $5, $6, $7, $8)
returning `+restartColumns,
		r.RestartID, r.WorkspaceID, r.WorkflowID, r.RunID, r.Reason, r.Mode, r.IdentityBefore, r.Force)
	if err != nil {
		return r, false, fmt.Errorf("issue restart of %s: %w", r.WorkspaceID, err)
	}
	issued, err := pgx.CollectExactlyOneRow(rows, scanRestart)
	if err != nil {
		return r, false, fmt.Errorf("issue restart of %s: %w", r.WorkspaceID, err)
	}
	return issued, true, tx.Commit(ctx)
}

// CompleteRestart closes a ledger row with its outcome and clears the marks
// it covered (those made before it was issued); the workspace's pending
// restart is cleared when no mark is left. Completing twice keeps the first
// completion's time.
func (s *Store) CompleteRestart(ctx context.Context, workspaceID, restartID, identityAfter, outcome string) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("complete restart of %s: %w", workspaceID, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := lockWorkspace(ctx, tx, workspaceID); err != nil {
		return fmt.Errorf("complete restart of %s: %w", workspaceID, err)
	}
	var requested time.Time
	err = tx.QueryRow(ctx, `
update box_restarts set completed_at = coalesce(completed_at, now()),
  identity_after = coalesce(identity_after, nullif($3, '')), outcome = coalesce(outcome, $4)
where workspace_id = $1 and restart_id = $2
returning requested_at`, workspaceID, restartID, identityAfter, outcome).Scan(&requested)
	if err != nil {
		return fmt.Errorf("complete restart %s of %s: %w", restartID, workspaceID, err)
	}
	if err := clearMarks(ctx, tx, workspaceID, requested); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// FailRestart closes a ledger row as failed, with the reason: nothing was
// restarted for it, and the next attempt issues a new one.
func (s *Store) FailRestart(ctx context.Context, workspaceID, restartID, reason string) error {
	_, err := s.pool.Exec(ctx, `
update box_restarts set completed_at = now(), outcome = 'failed', error = $3
where workspace_id = $1 and restart_id = $2 and completed_at is null`, workspaceID, restartID, reason)
	if err != nil {
		return fmt.Errorf("fail restart %s of %s: %w", restartID, workspaceID, err)
	}
	return nil
}

// ClearRestartPending clears marks made at or before upTo without a restart:
// the runtime already restarted after those deliveries.
func (s *Store) ClearRestartPending(ctx context.Context, workspaceID string, upTo time.Time) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("clear restart pending of %s: %w", workspaceID, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := lockWorkspace(ctx, tx, workspaceID); err != nil {
		return fmt.Errorf("clear restart pending of %s: %w", workspaceID, err)
	}
	if err := clearMarks(ctx, tx, workspaceID, upTo); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// clearMarks deletes the marks made up to upTo (the caller holds the
// workspace's lock) and clears the pending time when none is left.
func clearMarks(ctx context.Context, tx pgx.Tx, workspaceID string, upTo time.Time) error {
	if _, err := tx.Exec(ctx, `delete from restart_marks where workspace_id = $1 and marked_at <= $2`, workspaceID, upTo); err != nil {
		return fmt.Errorf("clear restart marks of %s: %w", workspaceID, err)
	}
	return clearPendingIfNoMarks(ctx, tx, workspaceID)
}

func clearPendingIfNoMarks(ctx context.Context, tx pgx.Tx, workspaceID string) error {
	if _, err := tx.Exec(ctx, `
update workspaces set restart_pending_since = null, updated_at = now()
where id = $1 and restart_pending_since is not null
  and not exists (select 1 from restart_marks where workspace_id = $1)`, workspaceID); err != nil {
		return fmt.Errorf("clear restart pending of %s: %w", workspaceID, err)
	}
	return nil
}

// Restarts lists a workspace's ledger rows, oldest first.
func (s *Store) Restarts(ctx context.Context, workspaceID string) ([]Restart, error) {
	rows, err := s.pool.Query(ctx, `select `+restartColumns+` from box_restarts where workspace_id = $1 order by requested_at, restart_id`, workspaceID)
	if err != nil {
		return nil, fmt.Errorf("restarts of %s: %w", workspaceID, err)
	}
	out, err := pgx.CollectRows(rows, scanRestart)
	if err != nil {
		return nil, fmt.Errorf("restarts of %s: %w", workspaceID, err)
	}
	return out, nil
}

// Declared is a workspace and its declared plugins, which a fleet sweep
// converges to.
type Declared struct {
	WorkspaceID string
	Plugins     []reconcile.Plugin
}

// ActiveWorkspaces pages through active workspaces that have a declaration
// (or, reconciled before declarations were kept and not since, tracking
// rows, which then stand for it), by id after the given one.
func (s *Store) ActiveWorkspaces(ctx context.Context, after string, limit int) ([]Declared, error) {
	rows, err := s.pool.Query(ctx, `
select w.id, coalesce(d.plugins, (
  select jsonb_agg(jsonb_build_object('Name', p.plugin_name, 'Version', p.version) order by p.plugin_name)
  from workspace_plugins p where p.workspace_id = w.id))
from workspaces w left join workspace_declarations d on d.workspace_id = w.id
where w.status = 'active' and w.id > $1
  and (d.workspace_id is not null or exists (select 1 from workspace_plugins p where p.workspace_id = w.id))
order by w.id limit $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list active workspaces: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Declared, error) {
		var d Declared
		var data []byte
		if err := r.Scan(&d.WorkspaceID, &data); err != nil {
			return d, err
		}
		return d, json.Unmarshal(data, &d.Plugins)
	})
	if err != nil {
		return nil, fmt.Errorf("list active workspaces: %w", err)
	}
	return out, nil
}
