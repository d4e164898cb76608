-- The restart protocol's ledger and marks (see internal/restart).
--
-- box_restarts: one row per restart issued, not per run: a run issues one
-- per round, and a retry, a reset run or the next reconcile adopts the one
-- in flight instead of issuing another. restart_id is the token the box's
-- restart script applies once. requested_at is when it was issued, written
-- before the command is sent.

alter table box_restarts add column restart_id text;
update box_restarts set restart_id = workflow_id || '/' || run_id;
alter table box_restarts alter column restart_id set not null;
alter table box_restarts drop constraint box_restarts_pkey;
alter table box_restarts add primary key (restart_id);

-- restarted, already (applied by an earlier attempt), not-needed (the box
-- owed nothing when it was issued), failed.
alter table box_restarts add column outcome text
  check (outcome in ('restarted', 'already', 'not-needed', 'failed'));
alter table box_restarts add column error text;
-- Owed by marks written before the box kept a journal.
alter table box_restarts add column force boolean not null default false;

update box_restarts set outcome = 'restarted' where completed_at is not null;
-- Of a workspace's unfinished rows only the latest can still be in flight.
update box_restarts r set completed_at = now(), outcome = 'failed', error = 'superseded by a later restart request'
where completed_at is null and exists (
  select 1 from box_restarts n
  where n.workspace_id = r.workspace_id and n.completed_at is null and n.requested_at > r.requested_at);

-- At most one restart in flight per workspace.
create unique index box_restarts_in_flight on box_restarts (workspace_id) where completed_at is null;

-- A mark written since the box keeps a journal is only a hint: the journal
-- decides. Older marks (journaled = false) still decide by their seal.
alter table restart_marks add column journaled boolean not null default false;

---- create above / drop below ----

alter table restart_marks drop column journaled;
drop index box_restarts_in_flight;
-- The old key holds one row per run: keep each run's latest.
delete from box_restarts r where exists (
  select 1 from box_restarts n
  where n.workspace_id = r.workspace_id and n.workflow_id = r.workflow_id and n.run_id = r.run_id
    and (n.requested_at, n.restart_id) > (r.requested_at, r.restart_id));
alter table box_restarts drop constraint box_restarts_pkey;
alter table box_restarts add primary key (workspace_id, workflow_id, run_id);
alter table box_restarts drop column force;
alter table box_restarts drop column error;
alter table box_restarts drop column outcome;
alter table box_restarts drop column restart_id;
