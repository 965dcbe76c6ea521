"""Security and limits: tokens (:mod:`.auth`), admission at the handshake (:mod:`.admission`), rate limits
(:mod:`.ratelimit`), connections per address (:mod:`.iptable`), TLS (:mod:`.tls`), and the port lock
(:mod:`.portlock`). Everything here is pure or nearly so, and off by default."""
