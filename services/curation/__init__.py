"""Curation: editors review, approve, reject and feature looks, over gRPC (CurationService) and a web console.

`desk` holds the rules (versions, audit), `ledger` the editors, tokens and audit log, `server` the gRPC
service, `console` the HTML console, `imports` the bridge to the workers, `labels` the label export.
"""
