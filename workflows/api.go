// Package workflows holds the reconcile workflows and their contract: the
// task queue, workflow IDs, inputs and results, signal and query names, and
// the client helper that the provisioning workflow and the starter use.
// Callers import only this file's names.
package workflows

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// TaskQueue is the task queue the reconciler's workers poll.
const TaskQueue = reconcile.TaskQueue

// SignalDeclare carries a newer declaration (Declaration) to a running
// reconcile: its plugins are reconciled before the restart decision.
const SignalDeclare = "declare"

// QueryStatus returns a running reconcile's Status.
const QueryStatus = "status"

// MaxPlugins bounds a declaration.
const MaxPlugins = 300

// DefaultMaxParallel is how many plugins of one box are reconciled at once.
// A box's probes and installs that arrive together share a command, so a
// workspace's plugins run at once up to this many (runs started before it
// was raised keep legacyMaxParallel).
const DefaultMaxParallel = 16

const legacyMaxParallel = 4

// ReconcileWorkflowID is the workflow ID of a workspace's reconcile: one at a
// time per workspace.
func ReconcileWorkflowID(workspaceID string) string { return "reconcile:" + workspaceID }

// PlanWorkflowID is the workflow ID of a workspace's dry run.
func PlanWorkflowID(workspaceID string) string { return "reconcile-plan:" + workspaceID }

// PluginWorkflowID is the deterministic ID of a plugin's child workflow.
func PluginWorkflowID(parentID, pluginName string) string { return parentID + "/plugin:" + pluginName }

// Plugin is a declared plugin: Name, Version and, optionally, the Digest
// of its bundle.
type Plugin = reconcile.Plugin

// ReconcileInput is ReconcileWorkspace's input.
//
// The reconcile records its declaration in the store (the workspace's
// desired state, with a generation that increases whenever the set
// changes) and converges the box to the whole stored set: every declared
// plugin is probed and recorded or delivered, every tracked plugin no
// longer declared is removed, and one restart follows if anything was
// swapped.
type ReconcileInput struct {
	WorkspaceID string
	Plugins     []Plugin
	// Prune: Plugins is the whole declared set; tracked plugins not in it
	// are removed from the box. Without Prune the declaration adds to (or
	// updates) the stored set and removes nothing: "ensure these".
	Prune bool `json:",omitempty"`
	// Converge: reconcile the stored declaration as it stands (what a fleet
	// sweep runs). Plugins, what the caller read, are recorded only for a
	// workspace that has no declaration yet.
	Converge bool `json:",omitempty"`
	// DryRun probes only and reports the plan.
	DryRun bool `json:",omitempty"`
	// MaxParallel bounds concurrent plugin reconciles on the box (default
	// DefaultMaxParallel).
	MaxParallel int `json:",omitempty"`
	// RestartGate, when set, is the workflow ID of a fleet sweep whose
	// permit a restart waits for (SignalPermitRequest).
	RestartGate string `json:",omitempty"`
}

// Declaration is the payload of SignalDeclare: a trigger's declaration,
// with or without Prune (see ReconcileInput).
//
// A burst of triggers folds into the running reconcile in arrival order
// (Then): a declaration with Prune replaces what came before it, one
// without adds to it. So {A,B,C,D}, then {A,B,C} with Prune, then {E}
// leaves {A,B,C,E} declared and D removed; {A,B,C} with Prune after {E}
// leaves {A,B,C}. A Converge trigger (a sweep's, or the starter's without
// --plugin) declares nothing: it asks for the stored declaration to be
// reconciled, which the running reconcile does anyway, so it folds away.
// The run records the folded declaration, reconciles what it changed, and
// decides its single restart only once no declaration is waiting.
type Declaration struct {
	Plugins []Plugin
	Prune   bool `json:",omitempty"`
	// Converge: no declaration, only "reconcile the stored one"; Plugins
	// are what the caller read, recorded only for a workspace with none.
	Converge bool `json:",omitempty"`
}

// Then is the declaration that d followed by next makes.
func (d Declaration) Then(next Declaration) Declaration {
	switch {
	case next.Converge:
		return d
	case d.Converge || next.Prune:
		return Declaration{Plugins: Fold(next.Plugins), Prune: next.Prune}
	}
	return Declaration{Plugins: Fold(d.Plugins, next.Plugins), Prune: d.Prune}
}

// Validate checks a declaration and names the first bad field.
func (d Declaration) Validate() error {
	if d.Prune && len(d.Plugins) == 0 {
		return errors.New("Prune: refused with no Plugins declared: it would remove every plugin from the box")
	}
	if d.Prune && d.Converge {
		return errors.New("Prune: refused with Converge, which reconciles the stored declaration as it stands")
	}
	return validatePlugins(d.Plugins)
}

var workspaceIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// Validate checks the input and names the first bad field.
func (in ReconcileInput) Validate() error {
	if !workspaceIDRE.MatchString(in.WorkspaceID) {
		return fmt.Errorf("WorkspaceID %q must match %s", in.WorkspaceID, workspaceIDRE)
	}
	if in.MaxParallel < 0 || in.MaxParallel > 64 {
		return fmt.Errorf("MaxParallel %d must be between 0 and 64", in.MaxParallel)
	}
	return in.declaration().Validate()
}

// declaration is the input's own declaration. A sweep's reconcile
// (RestartGate set) converges even when its sweep predates Converge, and so
// does its retry: the plugins that sweep listed are never re-declared.
func (in ReconcileInput) declaration() Declaration {
	return Declaration{Plugins: in.Plugins, Prune: in.Prune, Converge: in.Converge || in.RestartGate != ""}
}

func validatePlugins(ps []Plugin) error {
	if len(ps) == 0 {
		return errors.New("Plugins: at least one plugin must be declared")
	}
	if len(ps) > MaxPlugins {
		return fmt.Errorf("Plugins: %d declared, at most %d allowed", len(ps), MaxPlugins)
	}
	seen := map[string]bool{}
	for i, p := range ps {
		if err := reconcile.ValidateName(p.Name); err != nil {
			return fmt.Errorf("Plugins[%d].Name: %w", i, err)
		}
		if err := reconcile.ValidateVersion(p.Version); err != nil {
			return fmt.Errorf("Plugins[%d].Version (%s): %w", i, p.Name, err)
		}
		if seen[p.Name] {
			return fmt.Errorf("Plugins[%d].Name: %q is declared twice", i, p.Name)
		}
		seen[p.Name] = true
	}
	return nil
}

// Action is what a reconcile did (or, in a dry run, would do) with a plugin.
type Action = reconcile.Action

// Actions.
const (
	ActionRecorded     = reconcile.ActionRecorded     // on the box: tracking row written
	ActionDelivered    = reconcile.ActionDelivered    // delivered, then tracking row written
	ActionFailed       = reconcile.ActionFailed       // failed after its retries
	ActionWouldRecord  = reconcile.ActionWouldRecord  // dry run
	ActionWouldDeliver = reconcile.ActionWouldDeliver // dry run
	ActionPending      = reconcile.ActionPending      // not finished yet (status query)
	ActionCancelled    = reconcile.ActionCancelled    // the reconcile was cancelled first
	ActionRemoved      = reconcile.ActionRemoved      // not declared: removed from the box, tracking row deleted
	ActionWouldRemove  = reconcile.ActionWouldRemove  // dry run
)

// PluginResult is one plugin's outcome.
type PluginResult struct {
	Name    string
	Version string
	Action  Action
	Reason  string
	// Verdict is the probe's verdict, from which Reason is worded.
	Verdict reconcile.Verdict `json:",omitempty"`
	Digest  string            `json:",omitempty"`
	Error   string            `json:",omitempty"`
	// Changed: a removal took the plugin off the box (false when the box
	// did not have it).
	Changed bool `json:",omitempty"`
	// BoxVersion is the version the probe found on the box ("" when absent
	// or not probed).
	BoxVersion string `json:",omitempty"`
}

// RestartReport says whether the box was restarted, and why.
type RestartReport struct {
	Needed         bool
	Done           bool
	Reason         string
	Mode           string `json:",omitempty"`
	IdentityBefore string `json:",omitempty"`
	IdentityAfter  string `json:",omitempty"`
	// RestartIDs name the restart ledger rows (box_restarts.restart_id)
	// this round's restart saw through.
	RestartIDs []string `json:",omitempty"`
}

// ReconcileResult is ReconcileWorkspace's result.
type ReconcileResult struct {
	WorkspaceID string
	InstanceID  string
	DryRun      bool `json:",omitempty"`
	Plugins     []PluginResult
	// Restart is the last round's restart decision and what came of it.
	Restart RestartReport
	// Restarts lists every round's, when a declaration that arrived during
	// a restart made a round of its own (each round has its own restart).
	Restarts []RestartReport `json:",omitempty"`
	Failed   []string        `json:",omitempty"`
	Outcome  string
	Summary  string
	// Generation is the workspace's declaration this run converged to, and
	// ObservedGeneration the one last reconciled in full (equal when this
	// run did it).
	Generation         int64 `json:",omitempty"`
	ObservedGeneration int64 `json:",omitempty"`
}

// drift reports whether the run leaves the workspace behind its
// declaration (for a dry run: whether the plan would change the box).
func (r ReconcileResult) drift() bool {
	if r.DryRun {
		return r.Restart.Needed || r.Count(ActionWouldDeliver)+r.Count(ActionWouldRemove) > 0
	}
	return r.Outcome == OutcomeFailed || r.Outcome == OutcomeCancelled || len(r.Failed) > 0
}

// restarted counts the rounds whose restart was done.
func (r ReconcileResult) restarted() int {
	if len(r.Restarts) == 0 {
		if r.Restart.Done {
			return 1
		}
		return 0
	}
	n := 0
	for _, x := range r.Restarts {
		if x.Done {
			n++
		}
	}
	return n
}

// RestartsDone counts the box restarts the reconcile made (one per round
// at most).
func (r ReconcileResult) RestartsDone() int { return r.restarted() }

// Count returns how many plugins ended with action a.
func (r ReconcileResult) Count(a Action) int {
	n := 0
	for _, p := range r.Plugins {
		if p.Action == a {
			n++
		}
	}
	return n
}

// Status is a running reconcile's state, for QueryStatus.
type Status struct {
	Phase   string
	Plugins []PluginResult
	Restart RestartReport
}

// Search attributes of a reconcile, for the Web UI's and the CLI's
// visibility queries, e.g. reconciles that restarted a box in the last day:
//
//	ReconcileOutcome = "restarted" AND CloseTime > "2026-11-26T00:00:00Z"
var (
	SearchWorkspaceID = temporal.NewSearchAttributeKeyKeyword("WorkspaceId")
	SearchInstanceID  = temporal.NewSearchAttributeKeyKeyword("InstanceId")
	SearchOutcome     = temporal.NewSearchAttributeKeyKeyword("ReconcileOutcome")
	SearchPluginNames = temporal.NewSearchAttributeKeyKeywordList("PluginNames")
	// SearchDriftDetected is set when a reconcile ends: true when the
	// workspace is behind its declaration (a plugin failed, the run failed
	// or was cancelled; for a dry run, the plan would change the box).
	// Workspaces behind their declaration:
	//
	//	WorkflowId STARTS_WITH "reconcile:" AND DriftDetected = true AND ExecutionStatus != "Running"
	SearchDriftDetected = temporal.NewSearchAttributeKeyBool("DriftDetected")
)

// Outcomes, the values of SearchOutcome.
const (
	OutcomeRunning      = reconcile.OutcomeRunning
	OutcomeRecordedOnly = reconcile.OutcomeRecordedOnly
	OutcomeDelivered    = reconcile.OutcomeDelivered // delivered, no restart needed
	OutcomeRestarted    = reconcile.OutcomeRestarted
	OutcomeFailed       = reconcile.OutcomeFailed
	OutcomeDryRun       = reconcile.OutcomeDryRun
	OutcomeCancelled    = reconcile.OutcomeCancelled
)

// SearchAttributes are the custom search attributes a namespace needs
// before the reconcile workflows run there.
func SearchAttributes() map[string]enumspb.IndexedValueType {
	return map[string]enumspb.IndexedValueType{
		SearchWorkspaceID.GetName():   enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		SearchInstanceID.GetName():    enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		SearchOutcome.GetName():       enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		SearchPluginNames.GetName():   enumspb.INDEXED_VALUE_TYPE_KEYWORD_LIST,
		SearchDriftDetected.GetName(): enumspb.INDEXED_VALUE_TYPE_BOOL,
	}
}

// EnsureSearchAttributes registers the missing search attributes in the
// namespace (an operator call: on Temporal Cloud, create them in the
// namespace's settings instead).
func EnsureSearchAttributes(ctx context.Context, c client.Client, namespace string) error {
	have, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: namespace})
	if err != nil {
		return fmt.Errorf("list search attributes of %s: %w", namespace, err)
	}
	missing := map[string]enumspb.IndexedValueType{}
	for name, typ := range SearchAttributes() {
		if _, ok := have.GetCustomAttributes()[name]; !ok {
			missing[name] = typ
		}
	}
	if len(missing) == 0 {
		return nil
	}
	_, err = c.OperatorService().AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{Namespace: namespace, SearchAttributes: missing})
	if err != nil {
		return fmt.Errorf("add search attributes to %s: %w", namespace, err)
	}
	return nil
}

// ErrPluginsFailed is the error type of a reconcile that finished with some
// plugins failed; its details hold the ReconcileResult.
const ErrPluginsFailed = "PluginsFailed"

// Start triggers a workspace's reconcile. When one is already running for
// the workspace, no second run starts: the declaration is signalled to the
// running one, which reconciles any plugin it has not yet seen at that
// version before deciding its single restart. A dry run runs under its own
// workflow ID and never touches a running reconcile.
func Start(ctx context.Context, c client.Client, in ReconcileInput) (client.WorkflowRun, error) {
	if err := in.Validate(); err != nil {
		return nil, err
	}
	indexed := temporal.NewSearchAttributes(initialSearch(in)...)
	if in.DryRun {
		return c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID:                       PlanWorkflowID(in.WorkspaceID),
			TaskQueue:                TaskQueue,
			WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
			WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
			StaticSummary:            fmt.Sprintf("plan for %s: %d plugins", in.WorkspaceID, len(in.Plugins)),
			TypedSearchAttributes:    indexed,
		}, ReconcileWorkspace, in)
	}
	return c.SignalWithStartWorkflow(ctx, ReconcileWorkflowID(in.WorkspaceID), SignalDeclare, in.declaration(),
		client.StartWorkflowOptions{
			TaskQueue:             TaskQueue,
			WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
			StaticSummary:         fmt.Sprintf("reconcile %s: %d plugins", in.WorkspaceID, len(in.Plugins)),
			TypedSearchAttributes: indexed,
		}, ReconcileWorkspace, in)
}

// initialSearch is what a reconcile is indexed by from its start: the
// workspace, the outcome "running", and the plugin names when they fit.
func initialSearch(in ReconcileInput) []temporal.SearchAttributeUpdate {
	out := []temporal.SearchAttributeUpdate{SearchWorkspaceID.ValueSet(in.WorkspaceID), SearchOutcome.ValueSet(OutcomeRunning)}
	if names, ok := indexedPluginNames(in.Plugins); ok {
		out = append(out, SearchPluginNames.ValueSet(names))
	}
	return out
}

// indexedAtStart reports whether a run's start carried its initial search
// attributes (Start sets them), so it need not upsert them.
func indexedAtStart(sa temporal.SearchAttributes, in ReconcileInput) bool {
	ws, _ := sa.GetKeyword(SearchWorkspaceID)
	outcome, _ := sa.GetKeyword(SearchOutcome)
	return ws == in.WorkspaceID && outcome == OutcomeRunning
}

// Result waits for a reconcile and returns its result. A run that ended with
// failed plugins, or was cancelled, returns both the result and the error.
func Result(ctx context.Context, run client.WorkflowRun) (ReconcileResult, error) {
	var res ReconcileResult
	err := run.Get(ctx, &res)
	if err == nil {
		return res, nil
	}
	var app *temporal.ApplicationError
	var cancelled *temporal.CanceledError
	switch {
	case errors.As(err, &app) && app.Type() == ErrPluginsFailed && app.HasDetails():
		_ = app.Details(&res)
	case errors.As(err, &cancelled) && cancelled.HasDetails():
		_ = cancelled.Details(&res)
	}
	return res, err
}

// Fold returns the plugin set that declarations make when they arrive in
// order: a later declaration's version of a plugin wins; a plugin keeps its
// place from its first declaration.
func Fold(declarations ...[]Plugin) []Plugin {
	var out []Plugin
	idx := map[string]int{}
	for _, d := range declarations {
		for _, p := range d {
			if i, ok := idx[p.Name]; ok {
				out[i] = p
				continue
			}
			idx[p.Name] = len(out)
			out = append(out, p)
		}
	}
	return out
}

// RetryInput is the input that re-runs a workspace's latest reconcile as
// it stood at its end: its start input with every declaration signalled to
// it folded in (Declaration.Then), for real (not a dry run), and without
// the sweep's restart gate, which belonged to that run's sweep. A sweep's
// run (Converge) retries as Converge, or, if it was signalled a
// declaration, as that declaration.
func RetryInput(ctx context.Context, c client.Client, workspaceID string) (ReconcileInput, error) {
	id := ReconcileWorkflowID(workspaceID)
	var in ReconcileInput
	var folded *Declaration
	iter := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	dc := converter.GetDefaultDataConverter()
	started := false
	for iter.HasNext() {
		ev, err := iter.Next()
		if err != nil {
			return in, fmt.Errorf("read the history of %s: %w", id, err)
		}
		if a := ev.GetWorkflowExecutionStartedEventAttributes(); a != nil {
			if err := dc.FromPayloads(a.GetInput(), &in); err != nil {
				return in, fmt.Errorf("decode the input of %s: %w", id, err)
			}
			d := in.declaration()
			folded = &d
			started = true
			continue
		}
		if a := ev.GetWorkflowExecutionSignaledEventAttributes(); a != nil && a.GetSignalName() == SignalDeclare {
			var d Declaration
			if err := dc.FromPayloads(a.GetInput(), &d); err != nil || d.Validate() != nil {
				continue // the run dropped it too
			}
			if folded == nil {
				continue // signalled before the start event: not this run's
			}
			next := folded.Then(d)
			folded = &next
		}
	}
	if !started {
		return in, fmt.Errorf("%s has no run to retry", id)
	}
	in.Plugins, in.Prune, in.Converge = folded.Plugins, folded.Prune, folded.Converge
	in.DryRun, in.RestartGate = false, ""
	return in, in.Validate()
}
