package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// ProvisioningQueue is the demo provisioning workflow's task queue. It is
// part of the demo, not of the reconciler's worker.
const ProvisioningQueue = "provisioning-demo"

// ProvisionInput describes a workspace to bring up.
type ProvisionInput struct {
	WorkspaceID string
	// BootInstalled is what the box's image installs at boot (name -> version).
	BootInstalled map[string]string
	Declared      []workflows.Plugin
}

// ProvisionResult is the reconcile that provisioning triggered.
type ProvisionResult struct {
	InstanceID string
	RunID      string
}

// Box is a booted box as provisioning knows it.
type Box struct {
	InstanceID string
	Addr       string
}

// provisioner is the demo's provisioning activities: it boots simulated
// boxes and registers their workspaces.
type provisioner struct {
	fleet   *fleet.Fleet
	catalog *catalog.Catalog
	store   *store.Store
}

// BootBox starts a box whose boot install has put BootInstalled on it, and
// registers its workspace with the box's host key pinned.
func (p *provisioner) BootBox(ctx context.Context, in ProvisionInput) (Box, error) {
	b, err := p.fleet.Boot(ctx, p.catalog, in.BootInstalled)
	if errors.Is(err, catalog.ErrUnknownPlugin) {
		return Box{}, temporal.NewNonRetryableApplicationError(err.Error(), "UnknownPlugin", nil)
	}
	if err != nil {
		return Box{}, err
	}
	err = p.store.UpsertWorkspace(ctx, store.Workspace{Box: b.Workspace(in.WorkspaceID)})
	return Box{InstanceID: b.InstanceID, Addr: b.Addr()}, err
}

// WaitOnline waits until the box's sshd accepts connections.
func (p *provisioner) WaitOnline(ctx context.Context, b Box) error {
	for {
		c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", b.Addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var prov *provisioner

// ProvisionWorkspace boots a box, waits for it to come online, then
// triggers its reconcile the way a real provisioning workflow does: as a
// child workflow under the reconcile's own workflow ID, abandoned when
// provisioning closes (the reconcile outlives it).
func ProvisionWorkspace(ctx workflow.Context, in ProvisionInput) (ProvisionResult, error) {
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{MaximumAttempts: 3},
	})
	var box Box
	if err := workflow.ExecuteActivity(actx, prov.BootBox, in).Get(ctx, &box); err != nil {
		return ProvisionResult{}, err
	}
	if err := workflow.ExecuteActivity(actx, prov.WaitOnline, box).Get(ctx, nil); err != nil {
		return ProvisionResult{}, err
	}
	cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID:            workflows.ReconcileWorkflowID(in.WorkspaceID),
		TaskQueue:             workflows.TaskQueue,
		ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_ABANDON,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
		StaticSummary:         fmt.Sprintf("reconcile %s after boot: %d plugins", in.WorkspaceID, len(in.Declared)),
	})
	child := workflow.ExecuteChildWorkflow(cctx, workflows.ReconcileWorkspace, workflows.ReconcileInput{WorkspaceID: in.WorkspaceID, Plugins: in.Declared})
	var started workflow.Execution
	if err := child.GetChildWorkflowExecution().Get(ctx, &started); err != nil {
		return ProvisionResult{}, err
	}
	return ProvisionResult{InstanceID: box.InstanceID, RunID: started.RunID}, nil
}
