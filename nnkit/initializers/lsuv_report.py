"""What ``lsuv`` did, layer by layer: a value type with a readable table."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class LSUVLayerResult:
    """What LSUV measured and did for one layer.

    Attributes:
        name: The layer's name.
        initial_variance: Output variance on the batch before rescaling
            (after the orthogonal pre-initialization, when used).
        final_variance: Output variance after the last rescaling.
        iterations: How many times the kernel was divided by
            ``sqrt(variance)``; 0 when it was already within tolerance.
        converged: Whether ``|final_variance - 1| < tolerance``.
    """

    name: str
    initial_variance: float
    final_variance: float
    iterations: int
    converged: bool


@dataclasses.dataclass(frozen=True)
class LSUVReport:
    """The per-layer results of one ``lsuv`` call, in forward order.

    ``str(report)`` is a table; ``report.converged`` says whether every layer
    reached the tolerance.

    Attributes:
        layers: One ``LSUVLayerResult`` per rescaled layer, in the order the
            forward pass calls them.
        tolerance: The ``tolerance`` the call used.
        max_iterations: The ``max_iterations`` the call used.
    """

    layers: tuple
    tolerance: float
    max_iterations: int

    @property
    def converged(self):
        """True when every layer's output variance is within tolerance of 1."""
        return all(row.converged for row in self.layers)

    def __str__(self):
        header = ("layer", "initial var", "final var", "iterations", "converged")
        rows = [
            (
                row.name,
                f"{row.initial_variance:#.4g}",
                f"{row.final_variance:#.4g}",
                str(row.iterations),
                "yes" if row.converged else "NO",
            )
            for row in self.layers
        ]
        widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
            )
            for cells in [header, *rows]
        ]
        lines.append(
            f"tolerance={self.tolerance:g}, max_iterations={self.max_iterations}: "
            f"{sum(row.converged for row in self.layers)}/{len(self.layers)} layers converged"
        )
        return "\n".join(lines)
