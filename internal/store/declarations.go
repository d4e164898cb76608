package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// Declaration is a workspace's desired state: the declared plugin set, its
// generation (it increases whenever the set changes), who declared it and
// when, and the generation last reconciled in full.
type Declaration struct {
	WorkspaceID          string
	Plugins              []reconcile.Plugin // sorted by name
	Generation           int64
	DeclaredAt           time.Time
	DeclaredByWorkflowID string
	DeclaredByRunID      string
	ObservedGeneration   int64
	ObservedAt           *time.Time
	// Removals are the plugins a Prune declaration dropped whose removal
	// is not done yet.
	Removals []string
}

// Behind reports whether the declaration has not been reconciled in full.
func (d Declaration) Behind() bool { return d.ObservedGeneration < d.Generation || len(d.Removals) > 0 }

// Declare records a declaration (reconcile.NextDesired: with Prune it is
// the whole set and what it drops is owed a removal, without it adds; with
// Converge the stored set stands; a workspace with none stored starts from
// its tracking rows) and returns the stored declaration with the plugins
// owed a removal. The generation increases only when the set or the owed
// removals change, so declaring the same twice (a retried activity, two
// attempts at once: the workspace's row is locked) leaves one generation.
// A dry run writes nothing.
func (s *Store) Declare(ctx context.Context, in reconcile.DeclareInput, workflowID, runID string) (Declaration, []reconcile.Plugin, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return Declaration{}, nil, fmt.Errorf("declare for %s: %w", in.WorkspaceID, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	workspaceID := in.WorkspaceID
	if err := lockWorkspace(ctx, tx, workspaceID); err != nil {
		return Declaration{}, nil, fmt.Errorf("declare for %s: %w", workspaceID, err)
	}
	d, err := declaration(ctx, tx, workspaceID)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Declaration{}, nil, err
	}
	rows, err := tx.Query(ctx, `select plugin_name, version from workspace_plugins where workspace_id = $1 order by plugin_name`, workspaceID)
	if err != nil {
		return Declaration{}, nil, fmt.Errorf("declare for %s: %w", workspaceID, err)
	}
	tracked, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (reconcile.Plugin, error) {
		var p reconcile.Plugin
		return p, r.Scan(&p.Name, &p.Version)
	})
	if err != nil {
		return Declaration{}, nil, fmt.Errorf("declare for %s: %w", workspaceID, err)
	}
	var stored *reconcile.Desired
	if d.Generation > 0 {
		stored = &reconcile.Desired{Plugins: d.Plugins, Removals: d.Removals}
	}
	next := reconcile.NextDesired(stored, tracked, in)
	if stored == nil || !slices.Equal(next.Plugins, stored.Plugins) || !slices.Equal(next.Removals, stored.Removals) {
		plugins, err := json.Marshal(next.Plugins)
		if err != nil {
			return Declaration{}, nil, err
		}
		removals, err := json.Marshal(append([]string{}, next.Removals...))
		if err != nil {
			return Declaration{}, nil, err
		}
		if _, err := tx.Exec(ctx, `
insert into workspace_declarations (workspace_id, plugins, removals, generation, declared_by_workflow_id, declared_by_run_id)
values ($1, $2, $3, 1, $4, $5)
on conflict (workspace_id) do update set plugins = excluded.plugins, removals = excluded.removals,
  generation = workspace_declarations.generation + 1, declared_at = now(),
  declared_by_workflow_id = excluded.declared_by_workflow_id, declared_by_run_id = excluded.declared_by_run_id`,
			workspaceID, plugins, removals, workflowID, runID); err != nil {
			return Declaration{}, nil, fmt.Errorf("declare for %s: %w", workspaceID, err)
		}
		if d, err = declaration(ctx, tx, workspaceID); err != nil {
			return Declaration{}, nil, err
		}
	}
	// What is owed a removal, at its tracked version when it is tracked.
	var undeclared []reconcile.Plugin
	for _, name := range d.Removals {
		p := reconcile.Plugin{Name: name}
		if i := slices.IndexFunc(tracked, func(t reconcile.Plugin) bool { return t.Name == name }); i >= 0 {
			p = tracked[i]
		}
		undeclared = append(undeclared, p)
	}
	if in.DryRun {
		return d, undeclared, nil // rolled back
	}
	return d, undeclared, tx.Commit(ctx)
}

// Observe marks a generation reconciled in full; it never goes back.
func (s *Store) Observe(ctx context.Context, workspaceID string, generation int64) error {
	_, err := s.pool.Exec(ctx, `
update workspace_declarations set observed_generation = $2, observed_at = now()
where workspace_id = $1 and observed_generation < $2 and generation >= $2`, workspaceID, generation)
	if err != nil {
		return fmt.Errorf("observe generation %d of %s: %w", generation, workspaceID, err)
	}
	return nil
}

// Declaration reads a workspace's declaration; ErrNotFound if it has none.
func (s *Store) Declaration(ctx context.Context, workspaceID string) (Declaration, error) {
	return declaration(ctx, s.pool, workspaceID)
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func declaration(ctx context.Context, q querier, workspaceID string) (Declaration, error) {
	d := Declaration{WorkspaceID: workspaceID}
	var data, removals []byte
	err := q.QueryRow(ctx, `
select plugins, removals, generation, declared_at, declared_by_workflow_id, declared_by_run_id, observed_generation, observed_at
from workspace_declarations where workspace_id = $1`, workspaceID).Scan(
		&data, &removals, &d.Generation, &d.DeclaredAt, &d.DeclaredByWorkflowID, &d.DeclaredByRunID, &d.ObservedGeneration, &d.ObservedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, fmt.Errorf("declaration of %s: %w", workspaceID, ErrNotFound)
	}
	if err != nil {
		return d, fmt.Errorf("declaration of %s: %w", workspaceID, err)
	}
	if err := json.Unmarshal(data, &d.Plugins); err != nil {
		return d, fmt.Errorf("declaration of %s: %w", workspaceID, err)
	}
	if err := json.Unmarshal(removals, &d.Removals); err != nil {
		return d, fmt.Errorf("declaration of %s: %w", workspaceID, err)
	}
	if len(d.Removals) == 0 {
		d.Removals = nil
	}
	return d, nil
}

// ForgetTracking deletes a plugin's tracking row and its owed removal (it
// was removed from the box), in one transaction. Forgetting what is gone
// is a no-op, so a retried or duplicate attempt changes nothing more.
func (s *Store) ForgetTracking(ctx context.Context, workspaceID, pluginName string) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `delete from workspace_plugins where workspace_id = $1 and plugin_name = $2`, workspaceID, pluginName); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `update workspace_declarations set removals = removals - $2::text where workspace_id = $1 and removals ? $2`, workspaceID, pluginName)
		return err
	})
	if err != nil {
		return fmt.Errorf("forget %s/%s: %w", workspaceID, pluginName, err)
	}
	return nil
}
