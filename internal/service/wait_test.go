package service

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// Postgres that is shutting down or starting up is away, not refusing.
func TestDatabaseAwayOrRefusing(t *testing.T) {
	tests := []struct {
		err  error
		away bool
	}{
		{errors.New("dial tcp 127.0.0.1:5432: connect: connection refused"), true},
		{&pgconn.PgError{Code: "57P03", Message: "the database system is shutting down"}, true},
		{&pgconn.PgError{Code: "57P01"}, true},
		{&pgconn.PgError{Code: "08006"}, true},
		{&pgconn.PgError{Code: "53300"}, true},
		{&pgconn.PgError{Code: "28P01", Message: "password authentication failed"}, false},
		{&pgconn.PgError{Code: "3D000", Message: "database does not exist"}, false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.away, databaseAway(fmt.Errorf("connect: %w", tt.err)), tt.err.Error())
	}
}

// Every declared default parses into its field.
func TestDefaultsParse(t *testing.T) {
	for _, s := range settings {
		var c Config
		require.NoError(t, set(s.field(&c), s.Default), s.Env)
	}
}
