// Package migrations holds the database schema as SQL migrations, embedded in
// the binaries, and applies them with tern (which takes an advisory lock, so
// two workers starting at once apply each migration once).
package migrations

import (
	"context"
	"embed"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed *.sql
var files embed.FS

// VersionTable records the applied schema version.
const VersionTable = "public.schema_version"

// Apply brings the database at dsn up to the latest schema version and
// returns the version it is at.
func Apply(ctx context.Context, dsn string) (int32, error) {
	return ApplyTo(ctx, dsn, -1)
}

// ApplyTo migrates the database at dsn to version (up or down; -1 is the
// latest) and returns the version it is at.
func ApplyTo(ctx context.Context, dsn string, version int32) (int32, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, fmt.Errorf("migrate: connect: %w", err)
	}
	defer conn.Close(ctx)
	m, err := migrate.NewMigrator(ctx, conn, VersionTable)
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	if err := m.LoadMigrations(files); err != nil {
		return 0, fmt.Errorf("migrate: load: %w", err)
	}
	if version < 0 {
		err = m.Migrate(ctx)
	} else {
		err = m.MigrateTo(ctx, version)
	}
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	v, err := m.GetCurrentVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrate: current version: %w", err)
	}
	return v, nil
}

// Latest is the schema version Apply brings a database to.
func Latest() int32 {
	entries, _ := files.ReadDir(".")
	return int32(len(entries))
}
