"""The card-fraud use case: a seeded transaction generator with a known fraud probability
per transaction, its card and merchant features, and its spec (`usecase.USE_CASE`,
registered as `fraud` under the entry-point group `kubeloop.usecases`)."""
