"""The browser client: the page `airwave serve` answers on plain HTTP (actors/net/http.py).

Static files only (HTML, ES modules, CSS, the vendored msgpack codec); this file makes the
folder a package so that it installs with airwave and the server finds it by name."""
