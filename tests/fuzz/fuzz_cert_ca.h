/* Made by gen_cert_seeds.py: the CAs the cert corpus was issued by, and
 * their keys (fuzz_cert_lean.c signs with them; test keys, used nowhere
 * else). */
#define FUZZ_CERT_CA_ED25519 \
  "-----BEGIN CERTIFICATE-----\n" \
  "MIIBNDCB56ADAgECAhBEnheaGh9H9pLj1Oulw42EMAUGAytlcDAeMRwwGgYDVQQD\n" \
  "DBNwMnBzaXAgQ0EgZnV6ei50ZXN0MCAXDTI2MTIwMjEwMzUyM1oYDzIxMjYxMTA4\n" \
  "MTA0NTIzWjAeMRwwGgYDVQQDDBNwMnBzaXAgQ0EgZnV6ei50ZXN0MCowBQYDK2Vw\n" \
  "AyEAqGIX0+57guzPRflCSKwHNQ1Ns5SsdDpEHQpK8sy64vujOTA3MA8GA1UdEwEB\n" \
  "/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMBQGA1UdEQQNMAuCCWZ1enoudGVzdDAF\n" \
  "BgMrZXADQQCapUMMtjyfLOqj38yqzNfizENue7Ffgddx7CqLugmcES0kO1eRK8Zy\n" \
  "tSl4uVi9feYom8x3gHWA9rQIPIkdvfgK\n" \
  "-----END CERTIFICATE-----\n" \
  ""
#define FUZZ_CERT_CA_ED25519_KEY \
  "-----BEGIN PRIVATE KEY-----\n" \
  "MC4CAQAwBQYDK2VwBCIEIC8HI5rqsiVUB5jsX2lu7Tr3WkefYRynAPkBL+5lr89o\n" \
  "-----END PRIVATE KEY-----\n" \
  ""
#define FUZZ_CERT_CA_P256 \
  "-----BEGIN CERTIFICATE-----\n" \
  "MIIBdTCCARugAwIBAgIQIZVqDKISEMsDB4Q0ggB8ejAKBggqhkjOPQQDAjAeMRww\n" \
  "GgYDVQQDDBNwMnBzaXAgQ0EgZnV6ei50ZXN0MCAXDTI2MTIwMjEwMzUzMVoYDzIx\n" \
  "MjYxMTA4MTA0NTMxWjAeMRwwGgYDVQQDDBNwMnBzaXAgQ0EgZnV6ei50ZXN0MFkw\n" \
  "EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEjHbnTOQ0OCDC6ATc4wJoAOTYgBvwOsH1\n" \
  "GuMZjKb4k6k3qCrXxhuV9g+Y9hfqhM32FssJvZaA89EeSmEZ30eZrqM5MDcwDwYD\n" \
  "VR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwFAYDVR0RBA0wC4IJZnV6ei50\n" \
  "ZXN0MAoGCCqGSM49BAMCA0gAMEUCIFoeUA14Y1GW3bgFMqgxEvxIZ8Jg1KAq1CLJ\n" \
  "76xJaAHKAiEAyOLKNnZY/SiWeRcFnvaOvojh1GvYmdmA0KdsaT8bI+E=\n" \
  "-----END CERTIFICATE-----\n" \
  ""
#define FUZZ_CERT_CA_P256_KEY \
  "-----BEGIN PRIVATE KEY-----\n" \
  "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg1W5xhen1BEFiLIwL\n" \
  "s6sbuXdsyqwjmDnMTbpi0efr4l+hRANCAASMdudM5DQ4IMLoBNzjAmgA5NiAG/A6\n" \
  "wfUa4xmMpviTqTeoKtfGG5X2D5j2F+qEzfYWywm9loDz0R5KYRnfR5mu\n" \
  "-----END PRIVATE KEY-----\n" \
  ""
