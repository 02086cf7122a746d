"""The operator's console: a web page at ``/ui`` fed by one server-sent event stream."""
