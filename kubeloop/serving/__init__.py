"""The online loop on one machine: KServe model servers on loopback, the canary router
(the embedded stand-in for KServe's traffic split), request logging in the format of
KServe's logger, traffic replay and online A/B evaluation.

Local topology (`kubeloop serve`):

    client ──► transformer (KServe ModelServer: Feast online lookup + the training transform's
               raw columns)  ──predictor_host──►  router (splits by canary percent, logs each
               request/response as KServe-logger CloudEvents with its variant)
                   ├──► predictor "primary" (KServe ModelServer, production version)
                   └──► predictor "canary"  (KServe ModelServer, canary version)

In the cluster the split happens at the InferenceService's ingress and the KServe agent
logs; locally the router does both, after a shared transformer (both revisions of the
transformer run the same code)."""
