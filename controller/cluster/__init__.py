"""The cluster store on etcd: nodes, overlay networks, their address leases and endpoints."""
