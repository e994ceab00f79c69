"""The store's storage core and its repositories; `data.storage.Store` puts them together."""
