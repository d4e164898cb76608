package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// scheduleCommand creates or updates the sweep's Temporal Schedule.
type scheduleCommand struct {
	in    workflows.SweepInput
	every time.Duration
}

func (c *scheduleCommand) flags(fs *flag.FlagSet) {
	sweepFlags(fs, &c.in)
	fs.DurationVar(&c.every, "every", 0, "how often the fleet sweep runs")
}

func (c *scheduleCommand) run(ctx context.Context, out io.Writer) error {
	if c.every == 0 {
		return errors.New("schedule: --every is required, e.g. --every 6h")
	}
	tc, err := dial()
	if err != nil {
		return err
	}
	defer tc.Close()
	created, err := workflows.EnsureSchedule(ctx, tc, c.every, c.in)
	if err != nil {
		return err
	}
	verb := "updated"
	if created {
		verb = "created"
	}
	fmt.Fprintf(out, "schedule %s %s: a fleet sweep every %s (window %d, error budget %d, %d restarts at once); pause or trigger it from the Web UI\n",
		workflows.SweepScheduleID, verb, c.every, c.in.MaxConcurrency, c.in.MaxErrors, c.in.MaxRestartsInFlight)
	return nil
}
