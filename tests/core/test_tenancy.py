"""Tenant isolation: a session bound to one tenant never sees or changes another's rows.

The test tables are declared on a base of their own (not ``keel.core.db.Base``, whose
metadata is Alembic's target) and created next to Keel's migrated ``tenants`` table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import ForeignKey, MetaData, String, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    aliased,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

from keel.core.db import Database
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.ids import new_id
from keel.core.tenancy import (
    Tenant,
    TenantScoped,
    TenantScopeError,
    bind_tenant,
    bound_tenant,
    create_tenant,
    ensure_tenant,
    get_tenant_by_slug,
    validate_tenant_slug,
)
from tests.support.tables import add_tenants_stub, created_tables, unique_name


class ScratchBase(AsyncAttrs, DeclarativeBase):
    metadata = MetaData()


add_tenants_stub(ScratchBase.metadata)


class Project(TenantScoped, ScratchBase):
    __tablename__ = unique_name("test_project")

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    tasks: Mapped[list[Task]] = relationship(back_populates="project", order_by="Task.title")


class Task(TenantScoped, ScratchBase):
    __tablename__ = unique_name("test_task")

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    title: Mapped[str] = mapped_column(String(100))
    project_id: Mapped[str] = mapped_column(ForeignKey(f"{Project.__tablename__}.id"))
    project: Mapped[Project] = relationship(back_populates="tasks")


@dataclass
class World:
    """Tenants A and B with their rows, and one of B's tasks filed under A's project."""

    database: Database
    tenant_a: str
    tenant_b: str
    project_a: str
    project_b: str

    def session(self, tenant_id: str | None) -> _BoundSession:
        return _BoundSession(self.database, tenant_id)


class _BoundSession:
    def __init__(self, database: Database, tenant_id: str | None) -> None:
        self._unit = database.session()
        self._tenant_id = tenant_id

    async def __aenter__(self) -> AsyncSession:
        session = await self._unit.__aenter__()
        if self._tenant_id is not None:
            bind_tenant(session, self._tenant_id)
        return session

    async def __aexit__(self, *exc_info: object) -> bool | None:
        return await self._unit.__aexit__(*exc_info)  # type: ignore[arg-type]


def slug(prefix: str) -> str:
    return unique_name(prefix).replace("_", "-")


@pytest.fixture
async def world(database: Database) -> AsyncIterator[World]:
    async with created_tables(database, ScratchBase.metadata):
        async with database.session() as session:
            tenant_a = (await create_tenant(session, slug("tenant-a"))).id
            tenant_b = (await create_tenant(session, slug("tenant-b"))).id
        async with database.session() as session:
            bind_tenant(session, tenant_a)
            project_a = Project(name="a-project")
            session.add(project_a)
            session.add_all(
                [
                    Task(title="a-task-1", project=project_a),
                    Task(title="a-task-2", project=project_a),
                ]
            )
        async with database.session() as session:
            bind_tenant(session, tenant_b)
            project_b = Project(name="b-project")
            session.add(project_b)
            session.add(Task(title="b-task", project=project_b))
            await session.flush()
            # Data that should never exist but must not leak if it does: B's row under A's.
            session.add(Task(title="b-cross", project_id=project_a.id))
        yield World(database, tenant_a, tenant_b, project_a.id, project_b.id)


async def all_titles(world: World) -> list[str]:
    async with world.session(None) as session:
        statement = select(Task.title).order_by(Task.title).execution_options(all_tenants=True)
        return list(await session.scalars(statement))


class TestBoundSessionReads:
    async def test_select_returns_only_the_bound_tenants_rows(self, world: World) -> None:
        async with world.session(world.tenant_a) as session:
            projects = list(await session.scalars(select(Project)))
            titles = list(await session.scalars(select(Task.title).order_by(Task.title)))
        assert [project.name for project in projects] == ["a-project"]
        assert titles == ["a-task-1", "a-task-2"]

    async def test_sessions_of_different_tenants_in_turn_each_see_their_own(
        self, world: World
    ) -> None:
        # Guards against the tenant of one statement being cached into the next one's.
        for tenant, expected in [
            (world.tenant_a, ["a-task-1", "a-task-2"]),
            (world.tenant_b, ["b-cross", "b-task"]),
            (world.tenant_a, ["a-task-1", "a-task-2"]),
        ]:
            async with world.session(tenant) as session:
                assert list(await session.scalars(select(Task.title).order_by(Task.title))) == (
                    expected
                )

    async def test_filtering_on_another_tenants_id_finds_nothing(self, world: World) -> None:
        async with world.session(world.tenant_a) as session:
            found = await session.scalar(select(Project).where(Project.id == world.project_b))
            assert found is None
            assert await session.get(Project, world.project_b) is None

    async def test_aggregates_count_only_the_bound_tenants_rows(self, world: World) -> None:
        async with world.session(world.tenant_a) as session:
            assert await session.scalar(select(func.count(Task.id))) == 2
            assert await session.scalar(select(func.count()).select_from(Task)) == 2

    async def test_aliased_and_joined_queries_are_scoped(self, world: World) -> None:
        owner = aliased(Project)
        async with world.session(world.tenant_a) as session:
            aliased_names = list(await session.scalars(select(owner.name)))
            joined = list(
                await session.execute(
                    select(Task.title, owner.name).join(owner, Task.project).order_by(Task.title)
                )
            )
            via_subquery = list(
                await session.scalars(
                    select(Project.name).where(
                        Project.id.in_(select(Task.project_id).where(Task.title == "b-task"))
                    )
                )
            )
        assert aliased_names == ["a-project"]
        assert [tuple(row) for row in joined] == [
            ("a-task-1", "a-project"),
            ("a-task-2", "a-project"),
        ]
        assert via_subquery == []

    async def test_eager_relationship_loads_are_scoped(self, world: World) -> None:
        async with world.session(world.tenant_a) as session:
            by_selectin = await session.scalar(select(Project).options(selectinload(Project.tasks)))
            session.expunge_all()
            by_join = (
                (await session.scalars(select(Project).options(joinedload(Project.tasks))))
                .unique()
                .one()
            )
        assert by_selectin is not None
        assert [task.title for task in by_selectin.tasks] == ["a-task-1", "a-task-2"]
        assert [task.title for task in by_join.tasks] == ["a-task-1", "a-task-2"]

    async def test_lazy_relationship_loads_are_scoped(self, world: World) -> None:
        async with world.session(world.tenant_a) as session:
            project = await session.get(Project, world.project_a)
            assert project is not None
            tasks = await project.awaitable_attrs.tasks
        assert [task.title for task in tasks] == ["a-task-1", "a-task-2"]

    async def test_many_to_one_load_of_another_tenants_row_finds_nothing(
        self, world: World
    ) -> None:
        async with world.session(world.tenant_b) as session:
            cross = await session.scalar(select(Task).where(Task.title == "b-cross"))
            assert cross is not None
            assert await cross.awaitable_attrs.project is None


class TestBoundSessionWrites:
    async def test_bulk_update_changes_only_the_bound_tenants_rows(self, world: World) -> None:
        async with world.session(world.tenant_a) as session:
            result = await session.execute(update(Task).values(title="renamed-" + Task.title))
            assert result.rowcount == 2  # type: ignore[attr-defined]
            targeted = await session.execute(
                update(Project).where(Project.id == world.project_b).values(name="taken")
            )
            assert targeted.rowcount == 0  # type: ignore[attr-defined]
        assert await all_titles(world) == [
            "b-cross",
            "b-task",
            "renamed-a-task-1",
            "renamed-a-task-2",
        ]

    async def test_bulk_delete_removes_only_the_bound_tenants_rows(self, world: World) -> None:
        async with world.session(world.tenant_b) as session:
            result = await session.execute(delete(Task))
            assert result.rowcount == 2  # type: ignore[attr-defined]
        async with world.session(world.tenant_a) as session:
            result = await session.execute(delete(Task).where(Task.title == "b-task"))
            assert result.rowcount == 0  # type: ignore[attr-defined]
        assert await all_titles(world) == ["a-task-1", "a-task-2"]

    async def test_new_row_is_stamped_with_the_sessions_tenant(self, world: World) -> None:
        async with world.session(world.tenant_b) as session:
            project = Project(name="stamped")
            session.add(project)
            await session.flush()
            assert project.tenant_id == world.tenant_b
        async with world.session(world.tenant_a) as session:
            assert await session.get(Project, project.id) is None

    async def test_new_row_naming_another_tenant_is_refused(self, world: World) -> None:
        with pytest.raises(TenantScopeError):
            async with world.session(world.tenant_a) as session:
                session.add(Project(name="smuggled", tenant_id=world.tenant_b))
        async with world.session(world.tenant_b) as session:
            assert list(await session.scalars(select(Project.name))) == ["b-project"]

    async def test_moving_a_loaded_row_to_another_tenant_is_refused(self, world: World) -> None:
        async def move() -> None:
            async with world.session(world.tenant_a) as session:
                project = await session.get(Project, world.project_a)
                assert project is not None
                project.tenant_id = world.tenant_b

        with pytest.raises(TenantScopeError):
            await move()
        async with world.session(world.tenant_a) as session:
            assert await session.get(Project, world.project_a) is not None

    async def test_bulk_update_cannot_move_rows_to_another_tenant(self, world: World) -> None:
        with pytest.raises(TenantScopeError):
            async with world.session(world.tenant_a) as session:
                await session.execute(update(Project).values(tenant_id=world.tenant_b))
        async with world.session(world.tenant_a) as session:
            assert list(await session.scalars(select(Project.name))) == ["a-project"]

    async def test_bulk_insert_naming_another_tenant_is_refused(self, world: World) -> None:
        with pytest.raises(TenantScopeError):
            async with world.session(world.tenant_a) as session:
                await session.execute(
                    insert(Project),
                    [{"id": new_id(), "name": "smuggled", "tenant_id": world.tenant_b}],
                )
        with pytest.raises(TenantScopeError):
            async with world.session(world.tenant_a) as session:
                await session.execute(
                    insert(Project).values(id=new_id(), name="smuggled", tenant_id=world.tenant_b)
                )
        async with world.session(world.tenant_b) as session:
            assert list(await session.scalars(select(Project.name))) == ["b-project"]

    async def test_bulk_insert_for_the_bound_tenant_is_allowed(self, world: World) -> None:
        async with world.session(world.tenant_a) as session:
            await session.execute(
                insert(Project), [{"id": new_id(), "name": "bulk", "tenant_id": world.tenant_a}]
            )
        async with world.session(world.tenant_a) as session:
            names = sorted(await session.scalars(select(Project.name)))
            assert names == ["a-project", "bulk"]


class TestUnboundSession:
    @pytest.mark.parametrize(
        "statement",
        [
            select(Project),
            select(Task.title),
            select(func.count(Task.id)),
            update(Task).values(title="x"),
            delete(Task),
        ],
        ids=["select-entity", "select-column", "count", "update", "delete"],
    )
    async def test_query_on_tenant_owned_table_raises(
        self, world: World, statement: object
    ) -> None:
        async with world.session(None) as session:
            with pytest.raises(TenantScopeError):
                await session.execute(statement)  # type: ignore[call-overload]
        assert len(await all_titles(world)) == 4

    async def test_get_by_primary_key_raises(self, world: World) -> None:
        async with world.session(None) as session:
            with pytest.raises(TenantScopeError):
                await session.get(Project, world.project_a)

    async def test_new_row_without_tenant_is_refused(self, world: World) -> None:
        with pytest.raises(TenantScopeError):
            async with world.session(None) as session:
                session.add(Project(name="homeless"))

    async def test_tables_that_are_not_tenant_owned_can_be_queried(self, world: World) -> None:
        async with world.session(None) as session:
            assert await session.get(Tenant, world.tenant_a) is not None
            assert bound_tenant(session) is None


class TestAllTenants:
    async def test_all_tenants_option_sees_every_tenants_rows(self, world: World) -> None:
        assert await all_titles(world) == ["a-task-1", "a-task-2", "b-cross", "b-task"]

    async def test_all_tenants_option_overrides_a_bound_tenant(self, world: World) -> None:
        async with world.session(world.tenant_a) as session:
            statement = select(Project.name).order_by(Project.name)
            names = await session.scalars(statement.execution_options(all_tenants=True))
            assert list(names) == ["a-project", "b-project"]
            assert bound_tenant(session) == world.tenant_a


class TestTenants:
    async def test_created_tenant_is_found_by_slug(self, world: World) -> None:
        name = slug("acme")
        async with world.database.session() as session:
            created = await create_tenant(session, name, "Acme Inc.")
        async with world.database.session() as session:
            found = await get_tenant_by_slug(session, name)
        assert (found.id, found.name) == (created.id, "Acme Inc.")
        assert found.created_at.tzinfo is not None

    async def test_duplicate_slug_is_a_conflict(self, world: World) -> None:
        name = slug("dup")
        async with world.database.session() as session:
            await create_tenant(session, name)
            with pytest.raises(Conflict):
                await create_tenant(session, name)

    async def test_ensure_tenant_creates_once(self, world: World) -> None:
        name = slug("once")
        async with world.database.session() as session:
            first, first_created = await ensure_tenant(session, name)
            again, again_created = await ensure_tenant(session, name)
        assert (first_created, again_created) == (True, False)
        assert first.id == again.id

    async def test_unknown_slug_is_not_found(self, world: World) -> None:
        async with world.database.session() as session:
            with pytest.raises(NotFound):
                await get_tenant_by_slug(session, slug("missing"))

    @pytest.mark.parametrize("bad", ["", "Upper", "-lead", "trail-", "under_score", "x" * 64])
    def test_invalid_slug_is_refused(self, bad: str) -> None:
        with pytest.raises(ValidationFailed):
            validate_tenant_slug(bad)

    @pytest.mark.parametrize("good", ["default", "a", "team-42", "x" * 63])
    def test_valid_slug_is_accepted(self, good: str) -> None:
        assert validate_tenant_slug(good) == good
