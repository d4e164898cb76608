package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/plugin-reconciler/plugin-reconciler/migrations"
)

// migrateCommand brings the reconciler's database to the latest schema.
type migrateCommand struct{ databaseURL string }

func (c *migrateCommand) flags(fs *flag.FlagSet) { databaseFlag(fs, &c.databaseURL) }

func (c *migrateCommand) run(ctx context.Context, out io.Writer) error {
	if c.databaseURL == "" {
		return errors.New("migrate: DATABASE_URL or --database-url is required")
	}
	v, err := migrations.Apply(ctx, c.databaseURL)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "database schema at version %d\n", v)
	return nil
}
