# Entry point of the hello app (run by /bin/busybox sh; no other binary exists in the image).
# The page says the version from $APP_VERSION (build arg) or else the VERSION file, and the host
# name (container id) so tests can tell instances apart. Port from $PORT, default 8080.
b=/bin/busybox
version="${APP_VERSION:-$($b cat /app/VERSION)}"
$b mkdir -p /www
$b sed -e "s/@VERSION@/$version/g" -e "s/@HOST@/$($b hostname)/g" /app/www/index.html >/www/index.html
$b cp /app/www/health /www/health
$b httpd -f -p "${PORT:-8080}" -h /www &
pid=$!
# httpd as PID 1 would ignore SIGTERM; stop it promptly on `docker stop`.
trap '$b kill $pid; exit 0' TERM INT
wait $pid
