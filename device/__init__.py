"""What a clinic installs: photos of film (finding, flattening, quality gate), the camera, the
service with its results page, bundle updates, the phone app's build, the install scripts and a
demo on shipped phantom samples."""
