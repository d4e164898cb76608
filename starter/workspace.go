package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
)

// workspaceAddCommand registers a workspace's box (or updates it).
type workspaceAddCommand struct {
	databaseURL string
	w           store.Workspace
}

func (c *workspaceAddCommand) flags(fs *flag.FlagSet) {
	databaseFlag(fs, &c.databaseURL)
	workspaceFlag(fs, &c.w.ID)
	fs.StringVar(&c.w.InstanceID, "instance", "", "EC2 instance id")
	fs.StringVar(&c.w.Region, "region", os.Getenv("AWS_REGION"), "AWS region")
	fs.StringVar(&c.w.AvailabilityZone, "az", "", "availability zone")
	fs.StringVar(&c.w.OSUser, "os-user", store.DefaultOSUser, "login user on the box")
	fs.StringVar(&c.w.PluginRoot, "plugin-root", store.DefaultPluginRoot, "plugin root on the box")
}

func (c *workspaceAddCommand) run(ctx context.Context, out io.Writer) error {
	w := c.w
	if w.ID == "" || w.InstanceID == "" || w.Region == "" {
		return errors.New("workspace add: --workspace, --instance and --region are required")
	}
	st, err := openStore(ctx, c.databaseURL)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.UpsertWorkspace(ctx, w); err != nil {
		return err
	}
	fmt.Fprintf(out, "workspace %s registered on %s (%s, user %s, plugins in %s)\n", w.ID, w.InstanceID, w.Region, w.OSUser, w.PluginRoot)
	return nil
}
