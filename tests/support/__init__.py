"""Test support for cripy's image service: images built from busybox-static (images), real docker-registry
instances on 127.0.0.1 (registry), a distribution token server (tokenserver), a fault-injecting reverse proxy
(faultproxy) and pytest fixtures wiring them up (fixtures). Nothing here touches the network beyond loopback."""
