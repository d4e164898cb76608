package activities_test

import (
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/activities"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// The workflows schedule activities by name; the worker registers the
// methods of Activities under theirs. They must be the same names.
func TestActivityNamesAreTheMethods(t *testing.T) {
	typ := reflect.TypeOf(&activities.Activities{})
	var methods []string
	for i := range typ.NumMethod() {
		methods = append(methods, typ.Method(i).Name)
	}
	names := []string{
		reconcile.ActivityLoadWorkspace, reconcile.ActivityProbeManifest, reconcile.ActivityRecordTracking,
		reconcile.ActivityDeliverViaEIC, reconcile.ActivityReadRestartFacts, reconcile.ActivityClearRestartPending,
		reconcile.ActivityRestartBox, reconcile.ActivityListWorkspaces, reconcile.ActivityRecordDeclaration,
		reconcile.ActivityObserveDeclaration, reconcile.ActivityRemoveViaEIC, reconcile.ActivityForgetTracking,
		reconcile.ActivityClaimBoxQueue,
	}
	require.ElementsMatch(t, names, methods)
}
