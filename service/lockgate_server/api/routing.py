"""Path matching for the route table: a couple of dict lookups per request, no scanning."""

from __future__ import annotations

from ..errors import MethodNotAllowed, NotFound
from .operations import Route

_Shape = tuple[int, ...]  # positions of the literal segments in a path of some length


class RouteTable:
    def __init__(self, routes: list[Route]) -> None:
        # length -> [(literal positions, {literal values: {method: (route, parameter positions)}})]
        self._by_length: dict[
            int, list[tuple[_Shape, dict[tuple[str, ...], dict[str, tuple[Route, dict[str, int]]]]]]
        ] = {}
        for route in routes:
            segments = route.path.split("/")
            literals = tuple(i for i, segment in enumerate(segments) if not segment.startswith("{"))
            parameters = {segments[i][1:-1]: i for i in range(len(segments)) if i not in literals}
            shapes = self._by_length.setdefault(len(segments), [])
            table = next((table for shape, table in shapes if shape == literals), None)
            if table is None:
                table = {}
                shapes.append((literals, table))
            methods = table.setdefault(tuple(segments[i] for i in literals), {})
            methods[route.method] = (route, parameters)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        parts = path.split("/")
        for literals, table in self._by_length.get(len(parts), ()):
            methods = table.get(tuple(parts[i] for i in literals))
            if methods is None:
                continue
            found = methods.get(method)
            if found is None:
                raise MethodNotAllowed(f"{method} is not allowed on {path}")
            route, parameters = found
            return route, {name: parts[i] for name, i in parameters.items()}
        raise NotFound(f"no route {path}")
