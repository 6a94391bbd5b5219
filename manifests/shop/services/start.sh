# Serves /app/www on $PORT with busybox httpd; stops promptly on SIGTERM.
b=/bin/busybox
$b httpd -f -p "${PORT:-8080}" -h /app/www &
pid=$!
trap '$b kill $pid; exit 0' TERM INT
wait $pid
