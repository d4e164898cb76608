package workflows

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	ok := ReconcileInput{WorkspaceID: "ws-1", Plugins: []Plugin{{Name: "gh", Version: "1.0.0"}}}
	require.NoError(t, ok.Validate())
	many := make([]Plugin, MaxPlugins+1)
	for i := range many {
		many[i] = Plugin{Name: "p" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676)), Version: "1"}
	}
	tests := []struct {
		desc  string
		edit  func(*ReconcileInput)
		field string
	}{
		{"bad workspace", func(in *ReconcileInput) { in.WorkspaceID = "../ws" }, "WorkspaceID"},
		{"empty list", func(in *ReconcileInput) { in.Plugins = nil }, "Plugins: at least one"},
		{"dot-dot", func(in *ReconcileInput) { in.Plugins[0].Name = "../x" }, "Plugins[0].Name"},
		{"slash", func(in *ReconcileInput) { in.Plugins[0].Name = "a/b" }, "Plugins[0].Name"},
		{"space", func(in *ReconcileInput) { in.Plugins[0].Name = "a b" }, "Plugins[0].Name"},
		{"shell", func(in *ReconcileInput) { in.Plugins[0].Name = "a;rm -rf /" }, "Plugins[0].Name"},
		{"look-alike", func(in *ReconcileInput) { in.Plugins[0].Name = "gіthub" }, "Plugins[0].Name"},
		{"too long", func(in *ReconcileInput) { in.Plugins[0].Name = string(make([]byte, 200)) }, "Plugins[0].Name"},
		{"bad version", func(in *ReconcileInput) { in.Plugins[0].Version = "1 0" }, "Plugins[0].Version"},
		{"duplicate", func(in *ReconcileInput) { in.Plugins = append(in.Plugins, in.Plugins[0]) }, "declared twice"},
		{"too many", func(in *ReconcileInput) { in.Plugins = many }, "at most 300"},
		{"parallel", func(in *ReconcileInput) { in.MaxParallel = 1000 }, "MaxParallel"},
		{"prune with nothing declared", func(in *ReconcileInput) { in.Plugins, in.Prune = nil, true }, "Prune: refused with no Plugins declared"},
		{"prune and converge", func(in *ReconcileInput) { in.Prune, in.Converge = true, true }, "Prune: refused with Converge"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			in := ok
			in.Plugins = append([]Plugin(nil), ok.Plugins...)
			tt.edit(&in)
			require.ErrorContains(t, in.Validate(), tt.field)
		})
	}
}

func TestFold(t *testing.T) {
	t.Parallel()
	a1, a2, b1, c1 := Plugin{Name: "a", Version: "1"}, Plugin{Name: "a", Version: "2"}, Plugin{Name: "b", Version: "1"}, Plugin{Name: "c", Version: "1"}
	tests := []struct {
		desc string
		in   [][]Plugin
		want []Plugin
	}{
		{"one declaration", [][]Plugin{{a1, b1}}, []Plugin{a1, b1}},
		{"a later version wins, in place", [][]Plugin{{a1, b1}, {a2}}, []Plugin{a2, b1}},
		{"a narrower declaration removes nothing", [][]Plugin{{a1, b1}, {b1}}, []Plugin{a1, b1}},
		{"new plugins are appended", [][]Plugin{{a1}, {c1, b1}}, []Plugin{a1, c1, b1}},
		{"nothing", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			require.Equal(t, tt.want, Fold(tt.in...))
		})
	}
}

// A burst of declarations folds in arrival order into the one the store
// would hold had each been recorded in turn.
func TestDeclarationThen(t *testing.T) {
	t.Parallel()
	a1, a2, b1, c1, d1 := Plugin{Name: "a", Version: "1"}, Plugin{Name: "a", Version: "2"}, Plugin{Name: "b", Version: "1"}, Plugin{Name: "c", Version: "1"}, Plugin{Name: "d", Version: "1"}
	stored := []Plugin{a1, b1, c1, d1}
	tests := []struct {
		desc  string
		burst []Declaration
		want  Declaration
	}{
		{"additions add", []Declaration{{Plugins: []Plugin{a2}}, {Plugins: []Plugin{c1}}}, Declaration{Plugins: []Plugin{a2, c1}}},
		{"a prune replaces what came before", []Declaration{{Plugins: []Plugin{d1}}, {Plugins: []Plugin{a1, b1}, Prune: true}}, Declaration{Plugins: []Plugin{a1, b1}, Prune: true}},
		{"an addition after a prune keeps the prune", []Declaration{{Plugins: []Plugin{a1, b1}, Prune: true}, {Plugins: []Plugin{c1}}}, Declaration{Plugins: []Plugin{a1, b1, c1}, Prune: true}},
		{"the later prune wins", []Declaration{{Plugins: []Plugin{a1}, Prune: true}, {Plugins: []Plugin{b1}, Prune: true}}, Declaration{Plugins: []Plugin{b1}, Prune: true}},
		{"a converge after a prune changes nothing", []Declaration{{Plugins: []Plugin{a2, b1}, Prune: true}, {Plugins: stored, Converge: true}}, Declaration{Plugins: []Plugin{a2, b1}, Prune: true}},
		{"a declaration after a converge is the declaration", []Declaration{{Plugins: stored, Converge: true}, {Plugins: []Plugin{a2}}}, Declaration{Plugins: []Plugin{a2}}},
		{"converges fold into one", []Declaration{{Plugins: stored, Converge: true}, {Plugins: []Plugin{a1}, Converge: true}}, Declaration{Plugins: stored, Converge: true}},
	}
	// record is what recording each declaration in turn stores.
	record := func(cur []Plugin, d Declaration) []Plugin {
		if d.Converge {
			return cur
		}
		return reconcile.Declare(cur, d.Plugins, d.Prune)
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			folded := tt.burst[0]
			inTurn := record(stored, folded)
			for _, d := range tt.burst[1:] {
				folded = folded.Then(d)
				inTurn = record(inTurn, d)
			}
			require.Equal(t, tt.want, folded)
			require.Equal(t, inTurn, record(stored, folded), "folding then recording = recording each")
		})
	}
}

// A sweep's reconcile converges, also when its sweep predates Converge and
// when it is retried: RetryInput and the run both read declaration().
func TestASweepsReconcileConverges(t *testing.T) {
	t.Parallel()
	a := []Plugin{{Name: "a", Version: "1"}}
	for _, tt := range []struct {
		desc string
		in   ReconcileInput
		want bool
	}{
		{"a trigger", ReconcileInput{WorkspaceID: "ws-1", Plugins: a}, false},
		{"a sweep's child", ReconcileInput{WorkspaceID: "ws-1", Plugins: a, Converge: true, RestartGate: SweepWorkflowID}, true},
		{"an older sweep's child", ReconcileInput{WorkspaceID: "ws-1", Plugins: a, RestartGate: SweepWorkflowID}, true},
	} {
		require.Equal(t, tt.want, tt.in.declaration().Converge, tt.desc)
	}
}

func TestIndexedAtStart(t *testing.T) {
	in := ReconcileInput{WorkspaceID: "ws-1", Plugins: []Plugin{{Name: "gh", Version: "1.0.0"}}}
	for _, c := range []struct {
		name string
		sa   temporal.SearchAttributes
		want bool
	}{
		{"started by Start", temporal.NewSearchAttributes(initialSearch(in)...), true},
		{"started without (a child, an older starter)", temporal.NewSearchAttributes(), false},
		{"another workspace's", temporal.NewSearchAttributes(initialSearch(ReconcileInput{WorkspaceID: "ws-2", Plugins: in.Plugins})...), false},
		{"workspace only", temporal.NewSearchAttributes(SearchWorkspaceID.ValueSet("ws-1")), false},
		{"an ended outcome", temporal.NewSearchAttributes(SearchWorkspaceID.ValueSet("ws-1"), SearchOutcome.ValueSet(OutcomeRestarted)), false},
	} {
		require.Equal(t, c.want, indexedAtStart(c.sa, in), c.name)
	}
	// The plugin names are indexed from the start when they fit.
	require.Len(t, initialSearch(in), 3)
}
