"""Ad click-through-rate prediction: the seeded impression generator whose true click
probability is known, the user and ad features, and the request an ad server sends.

`usecases.ctr.usecase.USE_CASE` is the spec the engine reads (entry point `ctr` of the
group `kubeloop.usecases`)."""
