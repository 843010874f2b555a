"""Use cases: one package per problem the engine runs (registered under the entry-point
group `kubeloop.usecases`; see docs/new-use-case.md)."""
