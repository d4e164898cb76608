-- The desired state: per workspace, the declared plugin set and its
-- generation, like Kubernetes' metadata.generation and
-- status.observedGeneration. A reconcile records the declaration it was
-- given (a declaration with Prune replaces the set, one without adds to
-- it), the generation increasing whenever the set changes, and marks the
-- generation observed once every declared plugin is on the box and
-- tracked, and every plugin a Prune declaration dropped is removed. The
-- drift sweep converges to it.

create table workspace_declarations (
  workspace_id        text primary key references workspaces (id) on delete cascade,
  -- [{"Name": ..., "Version": ..., "Digest": ...}], sorted by name.
  plugins             jsonb not null,
  generation          bigint not null check (generation > 0),
  declared_at         timestamptz not null default now(),
  declared_by_workflow_id text not null,
  declared_by_run_id  text not null,
  observed_generation bigint not null default 0,
  observed_at         timestamptz,
  -- Plugins a Prune declaration dropped whose removal is not done yet
  -- (names, sorted): only these are removed, never a plugin merely
  -- tracked and not declared.
  removals            jsonb not null default '[]'
);

-- Workspaces reconciled before declarations were kept: their tracking rows
-- are what was declared, reconciled in full.
insert into workspace_declarations (workspace_id, plugins, generation, declared_by_workflow_id, declared_by_run_id, observed_generation, observed_at)
select workspace_id,
       jsonb_agg(jsonb_build_object('Name', plugin_name, 'Version', version) order by plugin_name),
       1, 'migration', 'migration', 1, now()
from workspace_plugins
group by workspace_id;

---- create above / drop below ----

drop table workspace_declarations;
