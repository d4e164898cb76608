package reconcile

import "time"

// Activity names, as the worker registers them (the methods of the
// activities' struct) and the workflows schedule them.
const (
	ActivityLoadWorkspace       = "LoadWorkspace"
	ActivityProbeManifest       = "ProbeManifest"
	ActivityRecordTracking      = "RecordTracking"
	ActivityDeliverViaEIC       = "DeliverViaEIC"
	ActivityReadRestartFacts    = "ReadRestartFacts"
	ActivityClearRestartPending = "ClearRestartPending"
	ActivityRestartBox          = "RestartBox"
	ActivityListWorkspaces      = "ListWorkspaces"
	ActivityRecordDeclaration   = "RecordDeclaration"
	ActivityObserveDeclaration  = "ObserveDeclaration"
	ActivityRemoveViaEIC        = "RemoveViaEIC"
	ActivityForgetTracking      = "ForgetTracking"
	ActivityClaimBoxQueue       = "ClaimBoxQueue"
)

// Error types of permanent failures. Workflows list them as non-retryable;
// activities return them as non-retryable application errors.
const (
	ErrInvalidInput       = "InvalidInput"
	ErrUnknownWorkspace   = "UnknownWorkspace"
	ErrUnknownPlugin      = "UnknownPlugin"
	ErrHostKeyMismatch    = "HostKeyMismatch"
	ErrInstanceNotRunning = "InstanceNotRunning"
	ErrUnknownInstance    = "UnknownInstance"
	ErrBundleRejected     = "BundleRejected"
	// ErrDigestMismatch: the catalog's bundle is not the one declared.
	ErrDigestMismatch = "DigestMismatch"
	// ErrRestartFailed: the restart command ran and failed in a way
	// retrying cannot mend (missing, not executable, or failing on every
	// attempt: a refused sudo, a broken unit).
	ErrRestartFailed = "RestartFailed"
)

// ProbeInput asks whether a plugin is on a box.
type ProbeInput struct {
	Workspace Box
	Plugin    string
}

// TrackInput is a tracking row to write.
type TrackInput struct {
	WorkspaceID string
	Plugin      string
	Version     string
	Digest      string
	Via         string
}

// Via says how a plugin came to be on the box.
const (
	ViaBoot      = "boot"      // found on the box
	ViaReconcile = "reconcile" // delivered by the reconciler
)

// DeliverInput is a plugin to deliver.
type DeliverInput struct {
	Workspace Box
	Plugin    string
	Version   string
	// Digest, when declared, is the bundle the catalog must serve.
	Digest string `json:",omitempty"`
}

// Delivery is what DeliverViaEIC did.
type Delivery struct {
	Digest  string
	Changed bool // false: the box already held exactly this bundle
}

// ClearInput clears pending marks without a restart.
type ClearInput struct {
	WorkspaceID string
	UpTo        time.Time
	// Workspace, when set, has its box's journal pruned of the lines its
	// runtime has outlived.
	Workspace *Box `json:",omitempty"`
}

// RestartInput asks for one restart of a box.
type RestartInput struct {
	Workspace Box
	Reason    string
}

// RestartOutcome is what RestartBox did.
type RestartOutcome struct {
	Mode           string
	IdentityBefore string
	IdentityAfter  string
	// AlreadyDone: an earlier attempt (of this run or another) issued the
	// restart; this attempt only saw it through.
	AlreadyDone bool
	// Restarted: the runtime restarted for this request (by this attempt
	// or the one it adopted). False when nothing was owed any more.
	Restarted bool `json:",omitempty"`
	// RestartIDs are the ledger rows this request saw through, in order.
	RestartIDs []string `json:",omitempty"`
	// Reason says why nothing was restarted, when nothing was.
	Reason string `json:",omitempty"`
}

// Done reports whether the box restarted for a RestartBox call, also for
// outcomes recorded before RestartOutcome said so itself.
func (o RestartOutcome) Done() bool {
	if o.Restarted {
		return true
	}
	return len(o.RestartIDs) == 0 && o.Reason == "" && o.IdentityAfter != "" && o.IdentityAfter != o.IdentityBefore
}

// PageInput asks for a page of workspaces to sweep.
type PageInput struct {
	After string
	Limit int
}

// DeclaredPlugin is a plugin a sweep re-declares.
type DeclaredPlugin struct {
	Name, Version string
	Digest        string `json:",omitempty"`
}

// DeclareInput is a declaration to record.
type DeclareInput struct {
	WorkspaceID string
	Plugins     []Plugin
	// Prune: the declaration is the whole set (see Declare).
	Prune bool `json:",omitempty"`
	// Converge: the stored declaration stands as it is; Plugins are
	// recorded only for a workspace that has none yet (one tracked before
	// declarations were kept).
	Converge bool `json:",omitempty"`
	// DryRun: compute what the declaration would be, write nothing.
	DryRun bool `json:",omitempty"`
}

// Declared is a workspace's box and its declaration after
// RecordDeclaration.
type Declared struct {
	Workspace  Box
	Generation int64
	// Observed is the generation last reconciled in full.
	Observed int64    `json:",omitempty"`
	Plugins  []Plugin // sorted by name
	// Undeclared are the plugins a Prune declaration dropped whose removal
	// is not done (at their tracked version when tracked): the reconcile
	// removes them.
	Undeclared []Plugin `json:",omitempty"`
}

// ObserveInput marks a declaration's generation reconciled in full.
type ObserveInput struct {
	WorkspaceID string
	Generation  int64
}

// RemoveInput is a plugin to remove from a box.
type RemoveInput struct {
	Workspace Box
	Plugin    string
}

// Removal is what RemoveViaEIC did.
type Removal struct {
	Changed bool // false: the box did not have it
}

// SweepTarget is a workspace a sweep reconciles.
type SweepTarget struct {
	WorkspaceID string
	Plugins     []DeclaredPlugin
}
